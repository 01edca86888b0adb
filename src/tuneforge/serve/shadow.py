"""serve.shadow: a challenger answers a sample of the champion's live requests too, for comparison only.

The user gets the champion's answer alone. The challenger's is generated after it (so it never delays the
user) and written to the request log's `shadow` table, `shadow_of` naming the champion's row. A challenger
already decoding `serve.max_batch_size` requests skips a sample rather than build a backlog on the machine it
shares with the champion; so does one that has become the champion itself.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuneforge.config import ServeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.generate import Generation, GenerationSettings
from tuneforge.registry import Registry
from tuneforge.serve.engine import Engine, ServedModel
from tuneforge.serve.recorder import record_shadow, since_ms

if TYPE_CHECKING:
    from tuneforge.serve.state import AppState

PREFIX = "registry:"


def shadow_plan(
    cfg: ServeConfig, reg: Registry | None, champion: int | None
) -> tuple[int, list[ServedModel]] | None:
    """The shadow version and its model (checked, nothing loaded), None without serve.shadow."""
    from tuneforge.serve.champion import version_models

    if cfg.shadow is None:
        return None
    spec = cfg.shadow
    name, _, which = spec.removeprefix(PREFIX).partition("@")
    if reg is None or champion is None or not spec.startswith(PREFIX) or name != reg.name or not which:
        served = f"registry:{reg.name}" if reg is not None else "runs"
        raise TuneforgeError(
            f"{spec!r} must be registry:NAME@VERSION of the registry being served ({served})",
            where="serve.shadow",
            fix="serve registry:NAME and set serve.shadow to registry:NAME@N or registry:NAME@challenger",
        )
    if which == "challenger":
        newer = [int(v["version"]) for v in reg.versions() if int(v["version"]) > champion]
        if not newer:
            raise TuneforgeError(
                f"registry {reg.name!r} has no challenger: no version is newer than the champion "
                f"({champion})",
                where="serve.shadow",
                fix=f"register one first: tuneforge registry register {reg.name} RUN",
            )
        version = max(newer)
    elif which.isdigit():
        version = int(which)
    else:
        raise TuneforgeError(
            f"{spec!r} names no version",
            where="serve.shadow",
            fix="end it with @N or @challenger",
        )
    if version == champion:
        raise TuneforgeError(
            f"{spec!r} names version {version}, the champion itself",
            where="serve.shadow",
            fix="shadow another version (registry:NAME@challenger: the newest one)",
        )
    return version, version_models(reg, version)


@dataclass
class Shadow:
    """The challenger's engine, and the shadow answers it is generating."""

    engine: Engine
    version: int
    fraction: float
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def follow(
        self,
        state: AppState,
        *,
        answering: int | None,
        endpoint: str,
        model: str,
        encode: Callable[[Engine], list[int]],
        settings: list[GenerationSettings],
    ) -> Callable[[str], None] | None:
        """What to start once version `answering` has answered request `rid` (None: not sampled, or the
        shadow is that version itself)."""
        if answering == self.version or random.random() >= self.fraction:
            return None

        def start(rid: str) -> None:
            if self.engine.queue_depth() >= state.cfg.max_batch_size:
                state.metrics.shadow.labels("skipped").inc()
                return
            task = asyncio.get_running_loop().create_task(
                self._answer(state, rid, endpoint, model, encode, settings)
            )
            self.tasks.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self.tasks.discard)

        return start

    async def _answer(
        self,
        state: AppState,
        rid: str,
        endpoint: str,
        model: str,
        encode: Callable[[Engine], list[int]],
        settings: list[GenerationSettings],
    ) -> None:
        start = time.perf_counter()
        prompt: list[int] = []
        gens: list[Generation] = []
        status, error = 200, None
        try:
            async with asyncio.timeout(state.cfg.request_timeout_s):
                prompt = await asyncio.to_thread(encode, self.engine)
                gens = list(await asyncio.gather(*(self.engine.generate(model, prompt, s) for s in settings)))
        except TimeoutError:
            status, error = 504, "timeout"
        except Exception as err:  # the challenger's own failure: logged as its answer, the user saw none
            status, error = 500, f"internal error: {type(err).__name__}: {err}"
        row: dict[str, Any] = {
            "id": f"shadow-{uuid.uuid4().hex}",
            "shadow_of": rid,
            "model": model,
            "model_version": self.version,
            "endpoint": endpoint,
            "status": status,
            "finish_reason": ",".join(g.finish_reason for g in gens) or None,
            "prompt_tokens": len(prompt) or None,
            "completion_tokens": sum(g.completion_tokens for g in gens),
            "latency_ms": since_ms(start),
            "response": json.dumps([g.text for g in gens], ensure_ascii=False),
            "error": error,
        }
        record_shadow(state, row)

    def close(self) -> None:
        self.engine.close()
