"""loragate stages: one module per stage, each a plain typed function plus its Prefect task and
DVC entry point. Offline defaults are set here, before any Hugging Face library is imported."""
import os

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "TOKENIZERS_PARALLELISM": "false",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                     "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
    os.environ.setdefault(_key, _value)
