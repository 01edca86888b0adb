"""How many CPU threads torch uses: `train.num_threads`, `eval.num_threads`, `serve.num_threads`.

torch's default is every logical CPU, which on a busy machine or with hyper-threading can make a step twice as
slow as one thread per physical core. `auto` takes the physical cores less those other jobs keep busy (the
load average), and says what it took when that is fewer than the cores. Training, evaluation and serving share
this rule (it sits in models/, the earliest stage all three load a model through).
"""

from __future__ import annotations

import os
import sys
from typing import Literal

Threads = int | Literal["auto"] | None


def apply_threads(wanted: Threads, key: str) -> int:
    """Apply a `*.num_threads` setting to torch; returns the thread count now in use.

    `auto`: see the module docstring; a count is applied; 0 or None keep torch's default. `key` names the
    setting in the line that says what `auto` chose.
    """
    import torch

    if wanted == "auto":
        wanted = auto_threads(key)
    if wanted:
        torch.set_num_threads(wanted)
    return int(torch.get_num_threads())


def auto_threads(key: str) -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:  # the user (or a launcher) chose already
        return int(env)
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    logical = psutil.cpu_count() or usable
    physical = psutil.cpu_count(logical=False) or logical
    # The physical share of the CPUs this process may use (a container or taskset may allow fewer).
    cores = max(1, usable * physical // logical)
    # Cores other jobs keep busy: threads that wait for a busy core stall every step at its synchronisation
    # points (measured: 2 threads beside one other job trained at 13.6 tokens/s, 1 thread at 54).
    # The load average also counts this process's own work of the last minute (the quickstart prepares
    # data before it trains): a short look at the CPUs now, while this process sleeps, caps it.
    load = load_average()
    if load >= 0.5:  # only then could it take a core away
        load = min(load, busy_now(logical))
    busy = min(cores - 1, round(load))
    threads = max(1, (cores - busy) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if busy and os.environ.get("RANK", "0") == "0":
        print(
            f"threads: {threads} of {cores} cores (other jobs keep {busy} busy: load "
            f"{load:.1f}); {key} sets a number",
            file=sys.stderr,
            flush=True,
        )
    return threads


def busy_now(logical: int, seconds: float = 0.25) -> float:
    """Logical CPUs other processes keep busy right now: psutil's system-wide use over `seconds`, during which
    this process sleeps (so its own work is not counted)."""
    import psutil

    return float(psutil.cpu_percent(interval=seconds)) / 100 * logical


def load_average() -> float:
    """Runnable processes over the last minute, this one's start barely in it; 0 where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
