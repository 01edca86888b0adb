"""Checks on a model or adapter folder before transformers reads it: a broken folder is one clear error.

transformers and PEFT report these cases (a damaged weights file, no tokenizer, code to run) as tracebacks
from deep inside their loaders, or for a missing tokenizer as advice about sentencepiece; the checks read
only small files (config.json, safetensors headers), so they run before any heavy loading.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.config import ModelConfig
from tuneforge.errors import TuneforgeError

# Files one of which any tokenizer transformers can load from a folder needs.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def damaged_safetensors(folder: Path) -> list[tuple[Path, str]]:
    """The safetensors files in folder whose header or length is wrong, with safetensors' own reason."""
    from safetensors import SafetensorError, safe_open

    damaged = []
    for file in sorted(folder.glob("*.safetensors")):
        try:
            # Reads and validates the header only: its size, its JSON, and that the tensors it lists cover the
            # file exactly (a cut-short file fails here), without reading the tensors.
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            damaged.append((file, str(err).removeprefix("Error while deserializing header: ")))
    return damaged


def check_weights(folder: Path, *, what: str = "the model", fix: str | None = None) -> None:
    bad = damaged_safetensors(folder)
    if bad:
        file, reason = bad[0]
        raise TuneforgeError(
            f"the weights of {what} are damaged: {file.name} is not a readable safetensors file ({reason})",
            where=str(file),
            fix=fix
            or "download or copy the model folder again; the file was cut short or is not safetensors",
        )


def check_tokenizer(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TuneforgeError(
            f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...)",
            where="model.name",
            fix="copy the tokenizer files of the model into the folder (tokenizer.save_pretrained(folder))",
        )


def check_code(folder: Path, cfg: ModelConfig) -> None:
    """Refuse an architecture transformers lacks: say whether the folder ships code for it (auto_map)."""
    file = folder / "config.json"
    if not file.is_file() or cfg.trust_remote_code:
        return
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise TuneforgeError(f"config.json is not valid JSON ({err})", where=str(file)) from None
    if not isinstance(config, dict):
        raise TuneforgeError("config.json is not a JSON object", where=str(file))
    from transformers import CONFIG_MAPPING, __version__

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type in CONFIG_MAPPING:
        return  # transformers has the architecture (an auto_map is then ignored: no code of the folder runs)
    if "auto_map" in config:
        raise TuneforgeError(
            f"{folder} ships its own model code (auto_map in config.json), which would run on this machine",
            where="model.trust_remote_code",
            fix="set model.trust_remote_code=true only if you trust the code in that folder",
        )
    raise TuneforgeError(
        f"{folder}: model type {model_type!r} is not one transformers {__version__} knows",
        where="model.name",
        fix="upgrade transformers; if the model comes with its own code, set "
        "model.trust_remote_code=true only if you trust it",
    )
