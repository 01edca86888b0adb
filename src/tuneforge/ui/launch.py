"""New run: a form that writes a run config into the workspace and starts `tuneforge train CONFIG` as a child
process (never inside the UI process), its estimate beforehand, and a Stop button (SIGTERM: the trainer
finishes its step, checkpoints and stops, resumable with --resume).

The config is checked by the config module's own `config_from_dict` (what `load_config` runs) and the method
by `resolve_method` (what `train` runs), so the form refuses exactly what the CLI refuses, key named.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tuneforge.artifacts import DatasetDir, RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.ui import security
from tuneforge.workspace import find_artifacts

router = APIRouter()
CONFIGS = "configs"  # workspace/configs/<name>.yaml and .log: what the UI launched, and what it printed
RUNS = "runs"
TASKS = ("causal-lm", "classification", "regression")
TASK_OF_FORMAT = {"classification": "classification", "regression": "regression"}
# The form's optional fields and the config key each one sets (left empty: the recipe's default).
KEYS = {
    "time_budget": "train.time_budget",
    "max_steps": "train.max_steps",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "max_length": "model.max_length",
    "eval_every": "train.eval_every",
}
RESUMABLE = ("interrupted", "crashed")
"""Run states `tuneforge train --resume` continues from the last checkpoint (the Resume button's)."""
START_WAIT_S = 180  # how long the form waits for the child to create its run folder
TRAIN_COMMAND = [sys.executable, "-m", "tuneforge", "train"]  # the child's command, its arguments follow


class StillStarting(Exception):
    """The child has not made its run folder when the form stops waiting (a model download, a big dataset)."""

    def __init__(self, log: str) -> None:
        super().__init__(log)
        self.log = log


class AlreadyStarting(TuneforgeError):
    """A second start of a run whose first child has not made its run folder yet (answered 409)."""


@dataclass
class Claim:
    """One start in progress, from before its child starts until its run folder exists or the child exits."""

    out: Path
    ready: Callable[[], bool]
    since: float  # time.monotonic() of the start
    log: str = ""
    child: subprocess.Popen[bytes] | None = None

    def held(self) -> bool:
        # No child yet: the start that claimed it is writing its config this moment.
        return not self.ready() and (self.child is None or self.child.poll() is None)


class Launches:
    """The runs this UI is starting now, by output folder.

    The trainer's own "the output folder exists" check is no guard until a first child has made the folder:
    a second click, a second tab or a replayed POST would start a second trainer on the same folder. Held in
    this process (the children are this process's): a UI that stops leaves no stale claim behind.
    """

    def __init__(self, rel: Callable[[Path], str]) -> None:
        self._rel = rel
        self._lock = threading.Lock()
        self._claims: dict[Path, Claim] = {}

    @contextlib.contextmanager
    def starting(self, out: Path, ready: Callable[[], bool], *, where: str, fix: str) -> Iterator[Claim]:
        """Claim `out` for one start (or refuse, AlreadyStarting); released when the block ends, except on
        StillStarting: that child goes on, and its reaper releases the claim when it exits."""
        claim = self._take(out, ready, where=where, fix=fix)
        try:
            yield claim
        except StillStarting:
            raise
        except BaseException:
            self.release(claim)
            raise
        self.release(claim)

    def _take(self, out: Path, ready: Callable[[], bool], *, where: str, fix: str) -> Claim:
        out = out.resolve()  # one key for runs/x and ./runs/x, whichever form names it
        with self._lock:
            held = self._claims.get(out)
            if held is not None and held.held():
                output = f" (its output: {held.log})" if held.log else ""
                raise AlreadyStarting(
                    f"{self._rel(out)} is still starting: a start from this UI "
                    f"{time.monotonic() - held.since:.0f} s ago has not made its run folder yet{output}",
                    where=where,
                    fix=fix,
                )
            claim = self._claims[out] = Claim(out, ready, time.monotonic())
            return claim

    def release(self, claim: Claim) -> None:
        with self._lock:
            if self._claims.get(claim.out) is claim:  # not a later start's claim on the same folder
                del self._claims[claim.out]


def _choices(ui: Any) -> dict[str, Any]:
    from tuneforge import builtin
    from tuneforge.models.catalog import catalog
    from tuneforge.models.methods import METHODS

    models = [builtin.PREFIX + name for name in builtin.MODELS]
    models += [m.hub_id for m in catalog() if m.builtin is None]
    datasets = [ui.rel(f.path) for f in find_artifacts(ui.workspace) if f.kind == "dataset"]
    return {"datasets": datasets, "models": models, "methods": list(METHODS), "tasks": TASKS, "keys": KEYS}


def run_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80]
    if not name:
        raise TuneforgeError("give the run a name (letters, digits, . _ -)", where="name")
    return name


def build_config(ui: Any, form: dict[str, str]) -> tuple[dict[str, Any], Any, Any]:
    """(the YAML's dict, the validated RunConfig, its ConfigSource) of the form; refuses as `train` would."""
    from tuneforge.config import ConfigSource, config_from_dict, given_keys
    from tuneforge.models.methods import resolve_method

    name = run_name(form.get("name", ""))
    ds = ui.dataset(form.get("dataset", ""))
    task = form.get("task") or TASK_OF_FORMAT.get(str(ds.manifest.get("format")), "causal-lm")
    raw: dict[str, Any] = {
        "data": {"path": str(ds.path)},
        "model": {"name": form.get("model", "").strip(), "task": task},
        "method": {"name": form.get("method") or "lora"},
        "train": {"output_dir": str(ui.workspace / RUNS / name)},
    }
    for field, key in KEYS.items():
        value = form.get(field, "").strip()
        if value:
            section, sub = key.split(".")
            raw[section][sub] = value
    if not raw["model"]["name"]:
        raise TuneforgeError("pick a base model", where="model.name")
    source = ConfigSource(None)
    cfg = config_from_dict(raw, source)
    source.given = given_keys(raw)
    resolve_method(cfg.method, source, task=cfg.model.task)
    return raw, cfg, source


def estimate_lines(cfg: Any, source: Any) -> list[str]:
    """The recipe's defaults for the keys left empty (as `train` fills them, with its reasons), then
    `tuneforge estimate`'s lines for this machine."""
    import torch

    from tuneforge.data.lengths import lengths_for_model
    from tuneforge.models.estimate import check_data_path, check_max_length, estimate
    from tuneforge.models.recommend import apply_settings, defaults_for, describe_defaults

    check_data_path(cfg)
    manifest = lengths_for_model(DatasetDir(Path(cfg.data.path)), cfg.model, cfg.data.prompt_template)
    chosen = defaults_for(cfg, manifest, source.given, cuda=torch.cuda.is_available(), processes=1)
    lines = [describe_defaults(cfg, manifest, chosen)] if chosen else []
    if chosen:
        cfg = apply_settings(cfg, chosen, source)
    check_max_length(cfg)
    return lines + estimate(cfg).lines()


@router.get("/new", response_class=HTMLResponse)
def new_page(request: Request, dataset: str = "") -> Response:
    ui = request.app.state.ui
    return ui.page(request, "new_run.html", values={"dataset": dataset}, **_choices(ui))


@router.post("/new")
async def new_run(request: Request) -> Response:
    form = await security.checked_form(request)
    return await run_in_threadpool(_new, request, form)  # the estimate reads the model's shape


def _new(request: Request, form: dict[str, str]) -> Response:
    ui = request.app.state.ui

    def again(status: int, **ctx: Any) -> Response:
        return ui.page(request, "new_run.html", status=status, values=form, **_choices(ui), **ctx)

    try:
        raw, cfg, source = build_config(ui, form)
        lines = estimate_lines(cfg, source)
        if form.get("action") != "start":
            return again(200, estimate=lines)
        run = _start(ui, raw, cfg)
    except AlreadyStarting as err:
        return again(409, error=err.render())
    except TuneforgeError as err:
        return again(400, error=err.render())
    except StillStarting as slow:
        # No run page to go to yet (it needs the run folder): say where to watch instead.
        return again(
            202,
            starting=f"The run is still starting after {START_WAIT_S} s (loading its model or preparing its "
            f"data) and goes on in the background: its output is in {slow.log}, and it appears under Runs "
            "once its folder exists.",
        )
    return RedirectResponse("/run?" + urlencode({"path": ui.rel(run)}), status_code=303)


def _start(ui: Any, raw: dict[str, Any], cfg: Any) -> Path:
    from tuneforge.ui.upload import _claim

    out = Path(cfg.train.output_dir)

    def made() -> bool:
        return RunDir.is_run(out) or (out / "config.yaml").is_file()

    fix = "wait until it appears under Runs (its log says what it is doing), or pick another name"
    with ui.launches.starting(out, made, where="name", fix=fix) as claim:
        if out.exists():
            raise TuneforgeError(
                f"there is already a run at {ui.rel(out)}", where="name", fix="pick another name"
            )
        folder = ui.workspace / CONFIGS
        folder.mkdir(exist_ok=True)
        config = _claim(folder, out.name + ".yaml")  # a new file: an existing config is never overwritten
        config.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
        log = _claim(folder, config.stem + ".log")
        _train(ui, [str(config)], log, claim)
    return out


def _train(ui: Any, args: list[str], log: Path, claim: Claim) -> None:
    """Start `tuneforge train ARGS` as its own process (output appended to `log`) and wait until
    `claim.ready()`, or say why it stopped first (the end of its log)."""
    start = log.stat().st_size if log.exists() else 0
    claim.log = ui.rel(log)
    with log.open("ab") as sink:
        # Its own session: the run goes on when the UI stops, and a Ctrl-C on the UI does not reach it.
        child = subprocess.Popen(
            [*TRAIN_COMMAND, *args],
            cwd=ui.workspace,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    claim.child = child

    def reap() -> None:  # an ended child is no zombie "alive", and no longer holds its run's name
        child.wait()
        ui.launches.release(claim)

    threading.Thread(target=reap, daemon=True).start()
    ready = claim.ready
    deadline = time.monotonic() + START_WAIT_S
    while not ready():
        code = child.poll()
        if code is not None and not ready():
            with log.open("rb") as f:
                f.seek(start)
                tail = f.read().decode("utf-8", errors="replace")[-3000:]
            raise TuneforgeError(
                f"`tuneforge train {' '.join(args)}` stopped before the run started (exit {code}):\n{tail}",
                where=ui.rel(log),
            )
        if time.monotonic() > deadline:
            raise StillStarting(ui.rel(log))
        time.sleep(0.2)


def trainer_pid(run: RunDir) -> int | None:
    """The training process of a run that trains now (the pid the trainer wrote in its lock file)."""
    from tuneforge.train.watch import _holder_alive, run_state

    return _holder_alive(run) if run_state(run).state == "training" else None


@router.post("/run/stop")
async def stop(request: Request) -> Response:
    form = await security.checked_form(request)
    ui = request.app.state.ui
    run = ui.run(form.get("path", ""))
    pid = trainer_pid(run)
    if pid is None:
        raise TuneforgeError(f"run {ui.rel(run.path)} is not training now", where="path")
    os.kill(pid, signal.SIGTERM)
    return RedirectResponse("/run?" + urlencode({"path": ui.rel(run.path)}), status_code=303)


@router.post("/run/resume")
async def resume(request: Request) -> Response:
    """Continue an interrupted run (Stop, or any SIGTERM) from its last checkpoint: `tuneforge train
    RUN/config.yaml --resume`, the trainer's own exact resume, as a child process like a new run."""
    form = await security.checked_form(request)
    ui = request.app.state.ui
    run = ui.run(form.get("path", ""))
    await run_in_threadpool(_resume, ui, run)
    return RedirectResponse("/run?" + urlencode({"path": ui.rel(run.path)}), status_code=303)


def _resume(ui: Any, run: RunDir) -> None:
    from tuneforge.train.watch import run_state
    from tuneforge.ui.upload import _claim

    # Ready once the new trainer holds the run (or, a short run, already ended it): until then a second
    # Resume click would pass the state check below and start a second trainer on the same checkpoint.
    def trainer_holds() -> bool:
        return run_state(run).state not in RESUMABLE

    fix = "wait until its page shows it training (its log says what it is doing)"
    starting = ui.launches.starting(run.path, trainer_holds, where="path", fix=fix)
    # StillStarting is no error here: the run page exists, and shows the run until the trainer holds it.
    with contextlib.suppress(StillStarting), starting as claim:
        state = run_state(run)
        if state.state not in RESUMABLE:
            raise TuneforgeError(
                f"run {ui.rel(run.path)} is {state.state}: only an interrupted run (stopped by a signal) "
                "or a crashed one (its trainer killed) resumes",
                where="path",
            )
        folder = ui.workspace / CONFIGS
        folder.mkdir(exist_ok=True)
        log = folder / f"{run.path.name}.log"  # where the UI's start wrote: one log per run, resumes appended
        if not log.exists():
            log = _claim(folder, log.name)
        _train(ui, [str(run.config_path), "--resume"], log, claim)
