"""A run as a reader sees it, while it trains or after: its state, and the metrics logged so far.

Read-only: nothing here takes the run's lock or writes a file, so watching never disturbs a training.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

from tuneforge.artifacts import RunDir, from_json_numbers

# What the manifest's status means for someone looking at the run.
_SAID = {
    "completed": "finished training",
    "failed": "stopped by an error",
    "interrupted": "stopped by a signal; it can be resumed",
}


@dataclass(frozen=True)
class RunState:
    """`state` is one of: training, completed, failed, interrupted, crashed, unreadable."""

    state: str
    detail: str
    live: bool  # metrics may still grow: worth watching


def _holder_alive(run: RunDir) -> int | None:
    """The PID in the run's lock file when that process still exists (the trainer writes it there)."""
    try:
        pid = int(run.lock_path.read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # it exists, it is only someone else's
    return pid


def run_state(run: RunDir, manifest: dict[str, Any] | None = None, problem: str | None = None) -> RunState:
    """How the run stands now; a `running` manifest whose trainer is gone is a crash (killed, power cut)."""
    if manifest is None:
        if problem:
            return RunState("unreadable", f"its manifest is damaged: {problem}", False)
        try:
            manifest = run.manifest
        except Exception as err:  # a damaged manifest: say so instead of failing the caller
            return RunState("unreadable", f"its manifest is damaged: {err}", False)
    status = str(manifest.get("status") or "")
    if status in ("running", "starting"):
        pid = _holder_alive(run)
        if pid is not None:
            return RunState("training", f"training now (process {pid})", True)
        return RunState(
            "crashed",
            "the process training it ended without recording how (killed, or the machine stopped); "
            f"continue it with: tuneforge train {run.config_path} --resume",
            False,
        )
    if status in _SAID:
        error = manifest.get("error")
        return RunState(status, _SAID[status] + (f": {error}" if error else ""), False)
    return RunState("unreadable", f"its manifest has no known status ({status or 'none'})", False)


def metrics_so_far(run: RunDir) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a last line the trainer is still writing (cut short) is left out."""
    try:
        text = run.metrics_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue  # a line being appended right now, or cut by a crash (train --resume drops it too)
        if isinstance(record, dict):
            out.append(from_json_numbers(record))
    return out


def last_record(run: RunDir, tail_bytes: int = 8192) -> dict[str, Any] | None:
    """The newest complete training record, reading only the end of metrics.jsonl (a list of many runs)."""
    try:
        with open(run.metrics_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - tail_bytes, 0))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(json.JSONDecodeError, RecursionError):
            record = json.loads(line)
            if isinstance(record, dict) and "split" not in record:
                return from_json_numbers(record)
    return None
