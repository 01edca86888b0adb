"""A finished run's model, loaded for use (evaluation, serving, export): its config, weights and tokenizer.

Loading a run is the models stage's job, so evaluation and serving share one loader and one "has it finished"
check instead of reaching into each other. Importing this module stays light: torch loads with the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.artifacts import RunDir
from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.loading import load_adapter, load_model, load_tokenizer, run_base_path

PROMPT_LEARNING = ("prompt-tuning", "prefix-tuning")
"""Methods that learn virtual tokens, not weight changes: nothing to merge, no sharing a PEFT model."""


def check_finished(run: RunDir) -> None:
    """Refuse a run whose training has not completed (its final weights are missing or partial)."""
    manifest = run.manifest
    if manifest.get("status") != "completed" or not run.final.is_dir():
        raise TuneforgeError(
            f"run {run.path} has not finished training (status: {manifest.get('status', 'unknown')})",
            fix=f"finish it with: tuneforge train {run.config_path} --resume",
        )


def run_config(run: RunDir) -> RunConfig:
    """The config a run was trained with (what train.reload_config does, without importing torch)."""
    import yaml

    from tuneforge.config import ConfigSource, config_from_dict

    raw = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
    return config_from_dict(raw, ConfigSource(run.config_path))


def load_tuned(run: RunDir, cfg: RunConfig) -> tuple[Any, Any]:
    """The trained model of a run: base + PEFT adapter, the full fine-tuned folder, or base + linear head."""
    from tuneforge.models.lineage import add_reference

    check_finished(run)
    manifest = run.manifest
    tok = load_tokenizer(cfg.model, str(run.final))
    if manifest.get("method") == "head":  # the frozen base + the run's linear head (models/linear_head.py)
        from tuneforge.models.linear_head import load_head_model

        return load_head_model(run.final, cfg.model, run_base_path(manifest), tok), tok
    labels = list(manifest.get("labels") or [])
    if manifest.get("saves_adapter", True):
        base = load_model(
            cfg.model, labels=labels, path=run_base_path(manifest), pad_token_id=tok.pad_token_id
        )
        model: Any = load_adapter(base, run.final)
        parent = manifest.get("parent") or {}
        if manifest.get("objective") == "dpo" and parent.get("saves_adapter"):
            # DPO continued the parent's adapter: its reference is that adapter as the parent saved it.
            add_reference(model, Path(parent["final"]))
    else:
        model = load_model(cfg.model, labels=labels, path=str(run.final), pad_token_id=tok.pad_token_id)
    return model, tok


def load_base(run: RunDir, cfg: RunConfig) -> tuple[Any, Any]:
    """The untuned base model a run was trained from, with its tokenizer and the run's labels."""
    manifest = run.manifest
    path = run_base_path(manifest)
    tok = load_tokenizer(cfg.model, path)
    labels = list(manifest.get("labels") or [])
    return load_model(cfg.model, labels=labels, path=path, pad_token_id=tok.pad_token_id), tok
