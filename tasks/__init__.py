"""loragate stages: one module per stage, each a plain typed function plus its Prefect task and
DVC entry point. Offline defaults are set here, before any Hugging Face library is imported."""
import os

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "TOKENIZERS_PARALLELISM": "false",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                     "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                     # CUDA memory grown in place, not in fixed blocks: a 7B under a 7.6 GiB budget reserved
                     # 8.62 GiB for 6.95 allocated without it, 7.30 with it, at the same speed (H100)
                     "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}.items():
    os.environ.setdefault(_key, _value)
