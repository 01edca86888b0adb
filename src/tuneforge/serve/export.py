"""`tuneforge export-model`: a run → a plain Hugging Face folder, the adapter merged into the base weights.

The merged model is checked against the adapter model on a probe batch before anything is written, and the
folder is written atomically. Only a folder an earlier export made (its manifest says so) is ever replaced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tuneforge.artifacts import RunDir, atomic_dir, read_json, write_json_atomic, write_text_atomic
from tuneforge.errors import TuneforgeError

KIND = "tuneforge.export"
MERGEABLE = ("lora", "dora", "ia3", "qlora")
PROMPT_LEARNING = ("prompt-tuning", "prefix-tuning")
GGUF_FILE = "model.gguf"
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
    run_dir: str | Path, out: str | Path, *, merge: bool = True, dequantize: bool = False, to: str = "hf"
) -> dict[str, Any]:
    """Write the merged (or full fine-tuned) model of a finished run to `out`; returns the export manifest."""
    from tuneforge.serve.engine import _run_config

    run, out = RunDir.open(run_dir), Path(out).expanduser()
    m = run.manifest
    if m.get("status") != "completed" or not run.final.is_dir():
        raise TuneforgeError(
            f"run {run.path} has not finished training (status: {m.get('status', 'unknown')})",
            fix=f"finish it with: tuneforge train {run.config_path} --resume",
        )
    cfg = _run_config(run)
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
    if to not in ("hf", "gguf"):
        raise TuneforgeError(f"unknown export format {to!r}", where="--to", fix="use hf or gguf")
    _check_out(out)
    if to == "gguf":
        _gguf_converter()  # fail before the long merge when the converter is missing

    from tuneforge.evaluation.run import load_tuned

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
        if to == "gguf":
            manifest["gguf"] = GGUF_FILE
        write_text_atomic(tmp / "README.md", export_card(run, manifest))
        write_json_atomic(tmp / "manifest.json", manifest)
        if to == "gguf":
            _to_gguf(tmp)  # inside the temporary folder: a failed conversion leaves nothing behind
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

    from tuneforge.evaluation.model_card import hub_base_model

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


def _gguf_converter() -> list[str]:
    """llama.cpp's own converter: the least fragile path, as it follows every architecture and tokenizer
    llama.cpp supports (the `gguf` package alone writes the format, not the tensor layout or vocab llama.cpp
    expects of each model)."""
    script = shutil.which("convert_hf_to_gguf.py")
    home = os.environ.get("LLAMA_CPP_DIR")
    if script is None and home and (Path(home) / "convert_hf_to_gguf.py").is_file():
        script = str(Path(home) / "convert_hf_to_gguf.py")
    if script is None:
        raise TuneforgeError(
            "GGUF export needs llama.cpp's convert_hf_to_gguf.py, which was not found",
            where="--to gguf",
            fix="clone https://github.com/ggml-org/llama.cpp, pip install -r "
            "requirements/requirements-convert_hf_to_gguf.txt from it, and set LLAMA_CPP_DIR to it; "
            "or export the HF folder (--to hf) and convert it yourself",
        )
    return [sys.executable, script]


def _to_gguf(folder: Path) -> None:
    """Convert the HF folder just written into `folder/model.gguf` (llama.cpp picks the tensor types)."""
    cmd = [*_gguf_converter(), str(folder), "--outfile", str(folder / GGUF_FILE)]
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
