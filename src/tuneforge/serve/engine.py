"""What the HTTP app needs from an engine (a Protocol), and how `tuneforge serve` arguments become models.

A served name is a run directory's name (its adapter or weights), or the base model those runs share.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from tuneforge.artifacts import RunDir
from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.generate import Generation, GenerationSettings, StepEvent
from tuneforge.models.loading import run_base_path
from tuneforge.models.runs import check_finished, run_config

Kind = Literal["generate", "classify"]


@dataclass
class ServedModel:
    """One name a request's `model` field can pick."""

    name: str
    kind: Kind
    run: RunDir | None = None
    config: RunConfig | None = None
    labels: list[str] = field(default_factory=list)
    adapter: str | None = None
    """PEFT adapter name on the shared base (None: the base itself, or a model with no adapter)."""
    path: str = ""
    """Folder the weights (or the adapter) load from."""
    base_path: str = ""
    method: str = ""


class Engine(Protocol):
    """A loaded set of models that can answer generation and classification requests concurrently."""

    models: dict[str, ServedModel]

    def encode_chat(self, model: str, messages: list[dict[str, str]]) -> list[int]: ...
    def encode_text(self, model: str, text: str) -> list[int]: ...
    def context_length(self, model: str) -> int: ...
    def queue_depth(self) -> int: ...

    async def generate(self, model: str, prompt: list[int], settings: GenerationSettings) -> Generation: ...
    def stream(self, model: str, prompt: list[int], settings: GenerationSettings) -> AsyncIterator[StepEvent]:
        """Events of one answer as they are produced; closing the iterator cancels the generation."""
        ...

    async def classify(self, model: str, texts: list[str]) -> list[dict[str, float]]: ...
    def close(self) -> None: ...


async def finished(events: AsyncIterator[StepEvent], cut_short: str) -> Generation:
    """The whole answer a stream of events ends with (an engine's `generate` is its `stream` drained)."""
    async for event in events:
        if event.done is not None:
            return event.done
    raise RuntimeError(cut_short)


def base_model_name(adapter_run: ServedModel) -> str:
    """The name the shared base of adapter runs is served under: its folder's name, or its built-in name."""
    assert adapter_run.run is not None
    name = str(adapter_run.run.manifest.get("base_model") or "base")
    return name if name.startswith("builtin:") else Path(name).name


def resolve_targets(targets: list[str]) -> list[ServedModel]:
    """`tuneforge serve` arguments → the models to serve, checked before anything heavy is loaded."""
    served: list[ServedModel] = []
    for target in targets:
        path = Path(target).expanduser()
        if (path / "config.yaml").is_file():
            run = RunDir.open(path)
            m = run.manifest
            check_finished(run)
            cfg = run_config(run)
            kind: Kind = "generate" if cfg.model.task == "causal-lm" else "classify"
            adapter = path.resolve().name if m.get("saves_adapter", True) else None
            served.append(
                ServedModel(
                    name=path.resolve().name,
                    kind=kind,
                    run=run,
                    config=cfg,
                    labels=list(m.get("labels") or []),
                    adapter=adapter,
                    path=str(run.final),
                    base_path=run_base_path(m),  # a built-in resolves on this machine
                    method=cfg.method.name,
                )
            )
        else:
            served.append(_plain_model(target))
    names = [s.name for s in served]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TuneforgeError(
            f"two served models would share the name {dupes[0]!r}",
            fix="serve runs whose directories have different names",
        )
    return served


def _plain_model(target: str) -> ServedModel:
    """A base model folder, hub id or built-in, served without an adapter."""
    from tuneforge.config import ModelConfig
    from tuneforge.models.loading import resolve_model_path

    path = Path(target).expanduser()
    if not (path.is_dir() or target.startswith("builtin:")):
        raise TuneforgeError(
            f"{target} is neither a run directory nor a model folder",
            where="tuneforge serve",
            fix="pass a run directory made by `tuneforge train` (with manifest.json), a Hugging Face "
            "model folder, or a built-in (tuneforge models)",
        )
    resolved = resolve_model_path(ModelConfig(name=target))
    name = target if target.startswith("builtin:") else path.resolve().name
    return ServedModel(name=name, kind="generate", path=resolved, base_path=resolved)
