"""The run config: typed sections (data, model, ..., monitor, retrain), YAML + key=value overrides.

Every field carries a one-line docstring (`description`) that doubles as reference documentation
(`tuneforge config --help-keys`). Unknown keys and wrong types are errors naming the key and file:line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from tuneforge.errors import TuneforgeError
from tuneforge.safe_yaml import MAX_CONFIG_BYTES, compose_bounded, short_repr

DataFormat = Literal["auto", "text", "instruction", "chat", "classification", "regression", "preference"]
Task = Literal["causal-lm", "classification", "regression"]
# DPO is chosen by the data, not by a task or method name: both spellings of other tools get this answer.
PREFERENCE_IS_DATA = (
    "DPO is chosen by the data: a causal-lm model trained on a preference dataset (prompt/chosen/rejected) "
    "learns with the DPO loss; write model.task: causal-lm, a method (e.g. method.name: lora), "
    "data.format: preference, and train.dpo_beta for beta"
)


def _not_spelled(spelling: str) -> Callable[[Any], Any]:
    """A validator refusing another tool's spelling of DPO with what to write instead."""

    def check(value: Any) -> Any:
        if value == spelling:
            raise ValueError(PREFERENCE_IS_DATA)
        return value

    return check


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> Any:
    """Seconds from '90s', '30m', '1h30m', '2h' or a plain number of seconds; anything else is left to the
    field's own type check (which then names what was given)."""
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = re.fullmatch(r"((\d+(\.\d+)?)[smhd])+", text)
        if parts is None:
            raise ValueError("a duration is a number of seconds or e.g. 90s, 30m, 1h30m, 2h")
        return sum(float(n) * DURATION_UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([smhd])", text))
    return value


class Section(BaseModel):
    # allow_inf_nan=False: YAML's .nan / .inf in any numeric field is refused (a NaN learning rate trains
    # nothing and an infinite one breaks the weights), not silently accepted.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True, allow_inf_nan=False
    )


class CleanConfig(Section):
    unicode_nfc: bool = True
    """Normalize text to Unicode NFC."""
    fix_mojibake: bool = True
    """Repair mojibake (text decoded with the wrong codec) with ftfy where it is safe."""
    whitespace: bool = True
    """Collapse runs of spaces, strip control characters and leading/trailing whitespace."""
    strip_html: bool = False
    """Strip HTML tags and decode entities."""
    missing: Literal["drop", "fill"] = "drop"
    """Rows with a missing text or label: drop them, or fill text with `fill_value`."""
    fill_value: str = ""
    """Value used for missing text when `missing: fill`."""
    min_chars: int = Field(1, ge=0)
    """Drop rows whose text is shorter than this many characters."""
    max_chars: int | None = Field(None, ge=1)
    """Drop rows whose text is longer than this many characters."""
    lowercase_labels: bool = True
    """Normalize labels: strip whitespace and lowercase."""
    label_map: dict[str, str] = Field(default_factory=dict)
    """Synonyms mapped onto canonical labels, e.g. {pos: positive}."""
    redact_pii: list[Literal["email", "phone", "credit_card", "ip", "url"]] = Field(default_factory=list)
    """PII kinds replaced by placeholder tokens such as <EMAIL>."""


class DataConfig(Section):
    path: str | None = None
    """A prepared dataset directory, or a raw file/folder/URL/database URL to prepare."""
    format: DataFormat = "auto"
    """Record format: text, instruction, chat, classification, regression, preference (auto: detect)."""
    source: str | None = None
    """Reader: jsonl, json, csv, parquet, text, html, folder, class-folders, sql, hf-disk (unset: guessed)."""
    text_column: str | None = None
    """Column holding the input text (auto-detected when unset)."""
    label_column: str | None = None
    """Column holding the class label or regression target (auto-detected when unset)."""
    prompt_column: str | None = None
    """Column holding the prompt/instruction (instruction and preference formats)."""
    response_column: str | None = None
    """Column holding the expected answer (instruction format)."""
    messages_column: str | None = None
    """Column holding a list of chat messages (chat format)."""
    input_column: str | None = None
    """Column holding the optional extra input of an instruction (instruction format)."""
    chosen_column: str | None = None
    """Column holding the preferred answer (preference format)."""
    rejected_column: str | None = None
    """Column holding the dispreferred answer (preference format)."""
    split_column: str | None = None
    """Column naming each row's split (train/validation/test); when set it is respected as is."""
    group_column: str | None = None
    """A sensitive attribute whose distribution is reported per split (and used for fairness later)."""
    query: str | None = None
    """SQL query, when `path` is a database URL."""
    delimiter: str | None = None
    """CSV delimiter (sniffed when unset)."""
    encoding: str | None = None
    """File encoding (utf-8 with BOM handling by default, invalid bytes are reported)."""
    text_unit: Literal["auto", "file", "paragraph", "line"] = "auto"
    """Plain text: an example per file, paragraph or line (auto: paragraph; in a folder: file)."""
    max_row_bytes: int = Field(16 * 2**20, ge=1024)
    """A source row larger than this is reported as an invalid row instead of being loaded."""
    output_dir: str | None = None
    """Where the prepared dataset directory goes (default: datasets/<source name>); an existing folder is only
    replaced when tuneforge made it and nothing was added to it."""
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """Train/validation/test fractions."""
    stratify: bool = True
    """Stratify the split by label (classification)."""
    seed: int = 42
    """Seed for shuffling and splitting."""
    on_error: Literal["raise", "drop"] = "raise"
    """Invalid rows: report all and stop (raise), or drop them into rejected.jsonl (drop)."""
    accept_runaway_quotes: bool = False
    """CSV: a quote never closed (or closed far too late) swallows the lines after it into one bad row; that
    stops the run with its line even with on_error=drop, unless this is true (then all those lines are
    dropped, counted as runaway_quote)."""
    dedup: Literal["none", "exact", "near"] = "near"
    """Remove exact, or exact and near duplicates (MinHash + LSH); duplicates never straddle splits."""
    label_conflicts: Literal["drop", "keep", "raise"] = "drop"
    """Classification: one text (compared as exact duplicates are) under different labels. drop: every copy
    goes to rejected.jsonl, since no copy's label can be trusted and keeping the first would let file order
    decide; keep: one copy per label stays (in one split); raise: stop and list them."""
    near_dup_threshold: float = Field(0.8, gt=0, le=1)
    """Jaccard similarity above which two texts are near duplicates."""
    max_rows: int | None = Field(None, ge=1)
    """Read at most this many rows from the source (for quick looks at big files)."""
    min_examples: int = Field(10, ge=1)
    """Fewer usable examples than this is an error."""
    max_tokens: int | None = Field(None, ge=1)
    """Token limit per example, counted as the model sees it (default: model.max_length)."""
    over_length: Literal["truncate", "drop", "raise"] = "truncate"
    """Over `max_tokens`: truncate (keep; cut when encoded, chats at a turn boundary), drop or raise."""
    truncation: Literal["head", "tail", "head-tail"] = "head"
    """Which part of an over-long text is kept: head, tail, or head-tail (1/4 start + 3/4 end)."""
    labels: list[str] | None = None
    """The allowed label set (classification); other labels are invalid rows."""
    prompt_template: str = (
        "Classify the text into one of these labels: {labels}.\nText: {text}\nAnswer with the label only."
    )
    """Prompt used when a causal LM learns a classification dataset ({text}, {labels} are filled in)."""
    clean: CleanConfig = Field(default_factory=CleanConfig)
    """Cleaning steps, each on/off."""


class ModelConfig(Section):
    name: str = "builtin:smollm2-135m-instruct"
    """A local Hugging Face folder, a hub id, or builtin:<name> (see `tuneforge models`)."""
    task: Annotated[Task, BeforeValidator(_not_spelled("preference"))] = "causal-lm"
    """causal-lm (SFT, generative classification, DPO on preference data), classification or regression."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    trust_remote_code: bool = False
    """Allow model code from the hub to run (only for models you trust)."""
    allow_pickle: bool = False
    """Allow loading pickle (.bin/.pt) weights; they can run arbitrary code, so off by default."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: auto picks bfloat16 on GPUs that support it, float32 otherwise."""
    max_length: int = Field(512, ge=8)
    """Maximum tokens per training example."""
    chat_template: str | None = None
    """A Jinja chat template (or a named one: chatml) for tokenizers without their own."""
    dropout: float | None = Field(None, ge=0, lt=1)
    """Override the model's own dropout probability."""


class MethodConfig(BaseModel):
    """Fine-tuning approach; its options are validated by the approach itself (see models/methods)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    name: Annotated[str, BeforeValidator(_not_spelled("dpo"))] = "lora"
    """full, lora, qlora, dora, prompt-tuning, prefix-tuning, ia3, or head (a linear head on a frozen model's
    embeddings: classification and regression, fast on a CPU)."""

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(Section):
    output_dir: str = "runs/run"
    """Run directory: adapter/weights, config.yaml, metrics.jsonl, checkpoints, manifest.json."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training split (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps to run; overrides epochs."""
    batch_size: int = Field(8, ge=1)
    """Examples per micro-batch (per process)."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay (never applied to biases and norms)."""
    scheduler: Literal["cosine", "linear", "constant", "cosine-with-restarts"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Fraction of steps spent warming up linearly (ignored when warmup_steps is set)."""
    warmup_steps: int | None = Field(None, ge=0)
    """Warmup steps."""
    num_cycles: int = Field(1, ge=1)
    """Restarts for cosine-with-restarts."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient clipping norm (null: no clipping)."""
    optimizer: Literal["adamw", "adamw-8bit"] = "adamw"
    """adamw, or adamw-8bit (bitsandbytes, CUDA only)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 where the GPU supports it, fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Trade compute for memory by recomputing activations."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state over the processes (FSDP2, like ZeRO-3), for models
    whose training does not fit one GPU; needs several processes (accelerate launch)."""
    fsdp_cpu_offload: bool = False
    """With fsdp: keep shards and optimizer state in CPU memory (slower; for when even shards do not fit)."""
    deepspeed: str | None = None
    """DeepSpeed ZeRO instead of DDP or FSDP: a preset (zero1, zero2, zero3, zero3-offload) or a DeepSpeed
    JSON file; batch size, accumulation, clipping and precision come from this section ("auto" there)."""
    eval_every: int = Field(50, ge=0)
    """Validate every N optimizer steps (0: only at the end)."""
    eval_max_examples: int | None = Field(256, ge=1)
    """Validation examples used during training (null: all)."""
    save_every: int = Field(100, ge=0)
    """Checkpoint every N optimizer steps (0: only at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Latest checkpoints kept (the best is always kept too)."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many validations without improvement (null: never)."""
    early_stopping_min_delta: float = Field(0.0, ge=0)
    """Smallest improvement of the validation metric that counts."""
    metric_for_best: str = "loss"
    """Validation metric used for early stopping and the best checkpoint."""
    class_weights: Literal["none", "balanced"] = "none"
    """Classification: weight the loss by inverse class frequency."""
    packing: bool = True
    """Text task: pack documents into full max_length blocks."""
    pack_examples: bool = True
    """Causal LM: run each micro-batch as one row of whole examples without padding, attention kept inside
    each example (same loss per target token). Off by itself where not exact: prompt/prefix tuning, heads."""
    group_by_length: bool = False
    """Put examples of similar length in the same micro-batch (sorted within shuffled windows of 64 batches):
    less padding where examples are not packed (heads, prompt/prefix tuning). Changes the data order."""
    max_bad_steps: int = Field(5, ge=1)
    """Consecutive NaN/inf steps tolerated before the run stops."""
    seed: int = 42
    """Seed for initialisation, data order and dropout."""
    log_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    """Extra loggers (metrics.jsonl is always written)."""
    progress: bool = True
    """Show a progress bar (where stderr is no terminal: a plain progress line every minute)."""
    time_budget: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] | None = None
    """Training time allowed (30m, 2h, 1h30m, or seconds): once spent, the run validates, saves and ends as
    an early stop does (the best checkpoint is the final model); the manifest says it stopped on budget."""
    dpo_beta: float = Field(0.1, gt=0)
    """Preference data (DPO): how far the tuned model may move from the base; higher keeps it closer."""
    init_from: str | None = None
    """A finished run to start from (as `model.name: RUN` does): DPO on top of an SFT run continues its
    adapter (or its whole model) with the SFT model as the frozen reference."""
    num_threads: Annotated[int, Field(ge=0)] | Literal["auto"] | None = "auto"
    """CPU threads per process: auto (OMP_NUM_THREADS if set, else the physical cores this process may use,
    shared by the processes on the machine), a number, or null/0 for torch's own default."""


JudgeMode = Literal["single", "pairwise"]


class JudgeConfig(Section):
    base_url: str
    """OpenAI-compatible endpoint of the judge, e.g. http://127.0.0.1:8000/v1 (tuneforge serve works)."""
    model: str
    """Model name to send to the judge endpoint."""
    api_key_env: str | None = None
    """Environment variable holding the judge's API key (the key itself is never written to disk)."""
    rubric: str = "helpfulness"
    """Built-in rubric (helpfulness, correctness) or the path of a text file with your own."""
    modes: list[JudgeMode] = Field(default_factory=lambda: list[JudgeMode](["single", "pairwise"]))
    """single: grade each answer 1-10; pairwise: tuned vs base, asked in both orders (no position bias)."""
    max_examples: int | None = Field(50, ge=1)
    """Judge at most this many examples (each costs 2-4 requests)."""
    timeout_s: float = Field(60.0, gt=0)
    """Seconds one judge request may take in all (connecting, waiting and reading the whole answer)."""
    max_tokens: int = Field(256, ge=1)
    """The longest judge answer to ask for (sent as max_tokens: a brief reason and the verdict)."""


class EvalConfig(Section):
    split: Literal["train", "validation", "test"] = "test"
    """Split to evaluate."""
    max_examples: int | None = Field(None, ge=1)
    """Evaluate on the first N examples of the split (null: all)."""
    num_threads: Annotated[int, Field(ge=0)] | Literal["auto"] | None = "auto"
    """CPU threads for evaluation: auto (the physical cores other jobs leave free), a number, or 0/null
    for torch's default."""
    batch_size: int = Field(16, ge=1)
    """Examples per forward pass."""
    compare_base: bool = False
    """Also evaluate the untuned base model on the same examples."""
    answers_from: str | None = None
    """A DPO run: the prepared chat/instruction dataset whose split evaluate also answers with the reference
    and the DPO model (default: the parent SFT run's dataset, from the run's lineage)."""
    max_new_tokens: int = Field(64, ge=1)
    """Generation length for generative metrics."""
    generate: bool = True
    """Chat/instruction: generate answers and score them against the references (BLEU, ROUGE, F1...)."""
    temperature: float = Field(0.0, ge=0)
    """Generation temperature for evaluation (0: greedy, the same answer every time)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling for evaluation (with temperature > 0)."""
    stop: list[str] = Field(default_factory=list)
    """Strings that end a generated answer (besides the model's end of turn)."""
    seed: int = 0
    """Seed of sampling and of the bootstrap resamples."""
    decision: Literal["score", "generate"] = "score"
    """Classification on a causal LM: score every label's answer, or parse a generated answer."""
    bootstrap: int = Field(1000, ge=0)
    """Bootstrap resamples for confidence intervals and paired tests (0: none)."""
    group_columns: list[str] = Field(default_factory=list)
    """Record fields to break metrics down by (data.group_column's `group` is used without this)."""
    min_group_size: int = Field(10, ge=1)
    """Groups with fewer examples are listed but not ranked."""
    rank_missing_group: bool = False
    """Rank rows without a group value ('', NaN, None) as a group of their own (default: reported apart)."""
    semantic_similarity: bool = False
    """Also score answers by embedding similarity to the reference with the built-in MiniLM encoder."""
    baseline: bool = True
    """Classification/regression: fit majority-class and TF-IDF + linear baselines on the train split."""
    few_shot: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    """With the base compared (a causal LM on classification, chat or instruction data): also prompt the base
    with k examples drawn (seeded) from the train split, never the evaluated one: auto (as many as fit
    model.max_length beside the longest input, at most 8, balanced over labels), a number, or 0 (off: it
    costs one more pass over the examples with longer prompts)."""
    threshold_optimizer: Literal["off", "demographic_parity", "equalized_odds"] = "off"
    """Binary classification heads with groups: Fairlearn per-group thresholds, beside the plain ones."""
    judge: JudgeConfig | None = None
    """LLM-as-judge over generated answers (off unless set)."""


class ServeConfig(Section):
    model: str | None = None
    """What `tuneforge serve` serves when its command line names nothing: a run directory, a model folder or
    built-in, or registry:NAME (the registry's champion, followed through promotions and rollbacks)."""
    registry_root: str | None = None
    """The folder holding the registries (unset: $TUNEFORGE_REGISTRY, else ./registry, as `tuneforge
    registry`)."""
    registry_poll_s: float = Field(1.0, gt=0, le=3600)
    """registry:NAME: how often the champion pointer is checked for a promotion or rollback."""
    shadow: str | None = None
    """registry:NAME@VERSION (or @challenger: the newest version above the champion) answers a sample of the
    champion's live requests too; its answers go to the log's `shadow` table, never to the user."""
    shadow_fraction: float = Field(0.1, gt=0, le=1)
    """Share of the champion's answered generation requests the shadow version answers too."""
    host: str = "127.0.0.1"
    """Address the OpenAI-compatible server binds to."""
    port: int = Field(8000, ge=1, le=65535)
    """Port the server listens on."""
    num_threads: Annotated[int, Field(ge=0)] | Literal["auto"] | None = "auto"
    """CPU threads for the transformers engine: auto (the physical cores other jobs leave free), a number,
    or 0/null for torch's default."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """Generation engine: transformers (CPU and GPU, continuous batching) or vllm (CUDA, `[vllm]` extra)."""
    keys_file: str = "~/.config/tuneforge/keys.json"
    """API keys (hashed) made by `tuneforge keys create`; when it holds keys, every request needs one."""
    log_db: str | None = "serve.sqlite"
    """Request log: a SQLite file path or any SQLAlchemy URL (postgresql://...); null turns logging off."""
    log_text: bool = True
    """Keep prompts and answers in the request log (false: only ids, timings, token counts, status)."""
    redact_pii: list[Literal["email", "url", "ip", "credit_card", "phone"]] = Field(default_factory=list)
    """PII kinds replaced by placeholders in logged prompts and answers (the data stage's redaction)."""
    max_body_bytes: int = Field(1_000_000, ge=1024)
    """Largest request body accepted (413 above it), checked before the body is parsed or tokenized."""
    max_prompt_tokens: int = Field(4096, ge=1)
    """Longest prompt accepted (400 above it)."""
    max_new_tokens: int = Field(512, ge=1)
    """Most tokens one answer may ask for (max_tokens above it is refused with 400)."""
    max_batch_size: int = Field(16, ge=1)
    """Rows decoded together in one forward (continuous batching)."""
    max_queue: int = Field(64, ge=1)
    """Requests waiting or running at once; beyond it 429 with Retry-After."""
    max_concurrent_per_key: int = Field(8, ge=1)
    """Requests one API key may have in flight at once (429 beyond it)."""
    request_timeout_s: float = Field(120.0, gt=0)
    """A request still generating after this many seconds is stopped (504)."""
    shutdown_grace_s: float = Field(30.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish before the server exits."""
    tensor_parallel_size: int = Field(1, ge=1)
    """vllm engine: GPUs one model is split over."""


AlertMetric = Literal[
    "embedding_drift",
    "prompt_length_drift",
    "script_mix_drift",
    "language_mix_drift",
    "label_drift",
    "answer_length_drift",
    "unseen_token_rate",
    "error_rate",
    "p95_latency_ms",
    "mean_rating",
]


class MonitorConfig(Section):
    min_samples: int = Field(100, ge=2)
    """Fewest live inputs (and reference examples) a test needs; below it: "not enough data"."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Significance level of the drift tests."""
    embedding_model: str = "builtin:minilm-l6"
    """Sentence encoder for embedding drift: a built-in or a local Hugging Face encoder folder."""
    max_reference: int = Field(1000, ge=10)
    """Training examples sampled (with a fixed seed) as the reference of the input and embedding tests."""
    max_live: int = Field(2000, ge=10)
    """Live inputs kept (a uniform reservoir sample of the window) for the text and embedding tests."""
    permutations: int = Field(99, ge=19)
    """Permutations of the domain-classifier and MMD nulls (smallest p-value: 1 / (permutations + 1))."""
    min_auc: float = Field(0.55, ge=0.5, le=1)
    """Embedding drift also needs this cross-validated ROC AUC: on big windows a tiny shift is significant."""
    alerts: dict[AlertMetric, float] | None = None
    """`--check` alerts, metric -> threshold (drift: p-value below, rates/latency above, mean_rating below);
    unset: embedding_drift, label_drift and answer_length_drift at alpha, and error_rate above 0.05."""


class RetrainConfig(Section):
    metric: str | None = None
    """The metric that decides whether the challenger replaces the champion (unset: the evaluation's headline,
    e.g. accuracy for a classifier, perplexity for a chat model)."""
    min_gain: float = Field(0.0, ge=0)
    """The least improvement in `metric` (in its own units) that promotes the challenger."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Significance level of the paired test of challenger vs champion on the frozen test split."""
    data: list[str] = Field(default_factory=list)
    """New raw data files or folders (e.g. a `tuneforge feedback export`), added to the champion's training
    data; read with this config's data.* columns and cleaning."""
    live_holdout: float = Field(0.25, ge=0, lt=1)
    """Share of the live corrections (a `tuneforge feedback export` in `data`) held out, seeded and stratified
    by label, to test champion and challenger on live data; the rest is trained on (0: train on all)."""
    live_min_n: int = Field(30, ge=1)
    """Fewest live held-out examples that are judged; fewer: "not enough data", and the frozen test alone
    decides."""


class SearchParam(Section):
    """One dimension of the search space (the Optuna distribution it is sampled from)."""

    type: Literal["float", "int", "categorical"]
    """float or int (between low and high), or categorical (one of choices)."""
    low: int | float | None = None
    """Smallest value (float, int)."""
    high: int | float | None = None
    """Largest value (float, int)."""
    log: bool = False
    """Sample on a log scale (float, int; needs low > 0), as suits learning rates."""
    step: int | float | None = Field(None, gt=0)
    """Only multiples of step above low (float, int; not with log)."""
    choices: list[str | int | float | bool | None] | None = None
    """The values to choose from (categorical)."""

    @model_validator(mode="after")
    def _check(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of choices")
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None]
            extra += ["log"] if self.log else []
            if extra:
                raise ValueError(f"a categorical parameter takes only choices, not {', '.join(extra)}")
            return self
        if self.choices is not None:
            raise ValueError(f"choices belong to categorical parameters; {self.type} ones take low and high")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs both low and high")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        if self.type == "int":
            bad = [k for k in ("low", "high", "step") if (getattr(self, k) or 0) % 1 != 0]
            if bad:
                raise ValueError(f"an int parameter needs whole numbers for {', '.join(bad)}")
        return self


class TuneConfig(Section):
    trials: int = Field(10, ge=1)
    """Trials to finish (completed or pruned); `tuneforge tune --trials N` overrides it."""
    metric: str = "loss"
    """Validation metric to optimise; trials also keep their best checkpoint by it."""
    direction: Literal["minimize", "maximize"] = "minimize"
    """Whether lower or higher is better."""
    space: dict[str, SearchParam] = Field(default_factory=dict)
    """Search space: dotted config key (train.learning_rate, method.r) -> {type, low, high, log, choices}."""
    start_with: list[dict[str, Any]] = Field(default_factory=list)
    """Trials to run first with these values (dotted key -> value), e.g. your current settings."""
    startup_trials: int = Field(5, ge=0)
    """Trials sampled at random before the TPE sampler starts modelling the results."""
    prune: bool = True
    """Stop trials whose validation metric is worse than the median of earlier trials at the same step."""
    prune_startup_trials: int = Field(3, ge=0)
    """Trials that always run to the end before any trial may be pruned."""
    prune_warmup_steps: int = Field(0, ge=0)
    """Optimizer steps a trial runs before it may be pruned."""
    max_consecutive_failures: int = Field(3, ge=1)
    """Failed trials in a row (e.g. diverged to NaN) after which the search stops."""
    storage: str | None = None
    """SQLAlchemy URL of the Optuna study, e.g. postgresql+psycopg://user@host/db: every `tuneforge tune`
    process given it (on one machine or many) joins the study and takes its next trial (default: study.db,
    SQLite, in train.output_dir)."""
    study_name: str = Field("tuneforge", min_length=1)
    """The study's name in tune.storage: one database can hold several searches under different names."""
    heartbeat_s: int = Field(30, ge=1)
    """Seconds between a running trial's signs of life in the study; a trial silent for twice as long (its
    process was killed or its machine lost) is marked failed and run again with the same values."""


class RunConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

    @model_validator(mode="after")
    def _check_splits(self) -> RunConfig:
        s = self.data.splits
        if any(x < 0 for x in s) or abs(sum(s) - 1.0) > 1e-6:
            raise ValueError(f"data.splits must be three non-negative fractions summing to 1, got {list(s)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Loading with located errors. PyYAML keeps line numbers only on its node tree, so we compose the tree once
# and map every dotted key to its line; pydantic's error locations are then translated to `file:line`.


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key + "."))
    return lines


class ConfigSource:
    """Where a config came from, to point errors at file:line, and which keys the user set."""

    def __init__(
        self, path: Path | None, lines: dict[str, int] | None = None, given: set[str] | None = None
    ) -> None:
        self.path = path
        self.lines = lines or {}
        self.overridden: set[str] = set()
        self.given = given
        """Dotted keys the YAML file or an override set; None for a config built in code, whose every key
        counts as set (so `tuneforge train`'s recipe defaults only ever fill what a user left out)."""

    def with_given(self, keys: set[str]) -> ConfigSource:
        """The same source, with `keys` counted as set too (a search's sampled keys, say)."""
        out = ConfigSource(self.path, self.lines, None if self.given is None else self.given | keys)
        out.overridden = set(self.overridden)
        return out

    def where(self, key: str) -> str:
        if key in self.overridden:
            return f"command-line override {key}"
        if self.path is None:
            return f"config key {key}"
        parts = key.split(".")
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return f"{self.path}:{line} ({key})"
            parts.pop()
        return f"{self.path} ({key})"


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise TuneforgeError(
            f"override {text!r} is not of the form key.sub=value", fix="write e.g. train.learning_rate=1e-4"
        )
    key, raw = text.split("=", 1)
    try:
        value = compose_bounded(raw, f"command-line override {key.strip()}")[1] if raw != "" else ""
    except TuneforgeError as err:
        if not err.what.startswith("not valid YAML"):
            raise
        value = raw  # not YAML: the text as it is
    return key.strip().split("."), value


def given_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys of every value a raw config sets (mappings are walked, lists are values)."""
    keys: set[str] = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            keys |= given_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def config_from_dict(raw: dict[str, Any], source: ConfigSource | None = None) -> RunConfig:
    source = source or ConfigSource(None)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                msg = f"unknown key {key!r}"
            else:
                msg = e["msg"].removeprefix("Value error, ")
                if e.get("input") is not None and e["type"] not in ("missing",):
                    msg += f" (got {short_repr(e['input'])})"
            problems.append(f"{source.where(key) if key else source.where('')}: {msg}")
        raise TuneforgeError(
            "invalid config:\n  " + "\n  ".join(problems),
            fix="see `tuneforge config-keys` for every key, its type and default",
        ) from None


def load_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> tuple[RunConfig, ConfigSource]:
    """Read a YAML run config, apply `key.sub=value` overrides, validate, remember where keys came from."""
    raw: dict[str, Any] = {}
    source = ConfigSource(None)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise TuneforgeError(f"config file {p} does not exist", fix="pass the path of a YAML run config")
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise TuneforgeError(
                f"the config is {size:,} bytes; a run config is at most {MAX_CONFIG_BYTES:,}",
                where=str(p),
                fix="pass a YAML run config (data, model, method, train, ... sections), not a data file",
            )
        node, loaded = compose_bounded(p.read_text(encoding="utf-8"), str(p))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TuneforgeError(
                "a run config must be a mapping of sections (data, model, ...)", where=str(p)
            )
        raw = loaded
        source = ConfigSource(p, _key_lines(node) if node is not None else {})
    _apply_overrides(raw, overrides or [], source)
    source.given = given_keys(raw)
    return config_from_dict(raw, source), source


def with_overrides(
    cfg: RunConfig, overrides: list[str], *, sections: tuple[str, ...] | None = None, command: str = ""
) -> RunConfig:
    """`cfg` with `key.sub=value` overrides on top, validated again; `sections` limits what may change."""
    if not overrides:
        return cfg
    source = ConfigSource(None)
    raw = cfg.to_dict()
    for text in overrides:
        keys, _ = _parse_override(text)
        if sections is not None and keys[0] not in sections:
            allowed = ", ".join(f"{s}.*" for s in sections)
            raise TuneforgeError(
                f"{command or 'this command'} takes overrides of {allowed} only; "
                f"{'.'.join(keys)} is fixed by the run",
                where=f"command-line override {'.'.join(keys)}",
                fix=f"drop it, or train again with it (tuneforge train CONFIG {text})",
            )
    _apply_overrides(raw, overrides, source)
    return config_from_dict(raw, source)


def dataset_override(overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """`data.path=DIR` apart from the other overrides. Commands on a finished run (evaluate, monitor) take it
    to find the run's prepared dataset where it is now, when the run or its project moved; every other data.*
    key stays as the run trained with it."""
    pointed, rest = None, []
    for text in overrides or []:
        keys, value = _parse_override(text)
        if keys == ["data", "path"]:
            pointed = str(value)
        else:
            rest.append(text)
    return pointed, rest


def _apply_overrides(raw: dict[str, Any], overrides: list[str], source: ConfigSource) -> None:
    for text in overrides:
        keys, value = _parse_override(text)
        _set_dotted(raw, keys, value)
        source.overridden.add(".".join(keys))


def type_name(ann: Any) -> str:
    """A type as a user reads it: `int | 'auto' | None`, not typing's repr of Annotated and Union."""
    import types
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if ann is type(None):
        return "None"
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann).replace("typing.", ""))


def config_keys() -> list[tuple[str, str, str, str]]:
    """Every config key as (key, type, default, description), for docs and `tuneforge config-keys`."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            meaning = " ".join((field.description or "").split())  # docstrings may span lines
            section = _section_type(ann)
            if section is not None:  # a section: its own keys; an optional one (eval.judge) says so first
                if not field.is_required() and field.get_default() is None:
                    rows.append((f"{prefix}{name}", "section | None", "null", meaning))
                walk(section, f"{prefix}{name}.")
                continue
            default = (
                "required"
                if field.is_required()
                else json.dumps(field.get_default(call_default_factory=True))
            )
            rows.append((f"{prefix}{name}", type_name(ann), default, meaning))

    walk(RunConfig, "")
    return rows


def _section_type(ann: Any) -> type[BaseModel] | None:
    """The section model of a field typed `Section` or `Section | None` (None: a plain value)."""
    import typing

    candidates = [a for a in typing.get_args(ann) if a is not type(None)] if typing.get_args(ann) else [ann]
    if len(candidates) == 1 and isinstance(candidates[0], type) and issubclass(candidates[0], BaseModel):
        return candidates[0]
    return None
