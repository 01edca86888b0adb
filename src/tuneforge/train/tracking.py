"""Where metrics go: metrics.jsonl always; TensorBoard, MLflow and W&B when asked for in `train.log_to`.

A resumed run continues the same records: metrics.jsonl is cut back to the checkpoint's step, TensorBoard
hides the events past it (purge_step), and MLflow / W&B continue the same run (ids kept in tracking.json).
"""

from __future__ import annotations

import json
import netrc
import os
import platform
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneforge.artifacts import read_json, to_json_numbers, write_json_atomic, write_text_atomic
from tuneforge.errors import TuneforgeError

IDS_FILE = "tracking.json"
MLFLOW_DB = "mlflow.db"


def check_sinks(sinks: list[str], run_dir: str | Path | None = None) -> None:
    """Fail before any work when a configured logger is not installed or not set up.

    With `run_dir`, MLflow's tracking store is opened too (before the run directory exists): a store that
    refuses to start is a user error, not a traceback in the middle of a run.
    """
    if "mlflow" in sinks:
        try:
            import mlflow
        except ImportError:
            raise TuneforgeError(
                "train.log_to names mlflow, but mlflow is not installed",
                where="train.log_to",
                fix="pip install 'tuneforge[mlflow]', or remove mlflow from train.log_to",
            ) from None
        if run_dir is not None:
            uri = mlflow_uri(Path(run_dir))
            try:
                if uri.startswith("sqlite:///"):
                    Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                mlflow.set_tracking_uri(uri)
                mlflow.set_experiment("tuneforge")
            except Exception as err:  # any store error: MLflow raises many types
                raise _start_failed("mlflow", err, f" (tracking URI {uri})") from None
    if "wandb" in sinks:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise TuneforgeError(
                "train.log_to names wandb, but wandb is not installed",
                where="train.log_to",
                fix="pip install wandb, or remove wandb from train.log_to",
            ) from None
        if not _wandb_configured():
            raise TuneforgeError(
                "train.log_to names wandb, but no W&B API key is configured (it would stop to ask for one)",
                where="train.log_to",
                fix="run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline to log locally",
            )


def _wandb_configured() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return (
            host is not None and netrc.netrc().authenticators(host) is not None
        )  # where `wandb login` writes
    except (OSError, netrc.NetrcParseError):
        return False


def mlflow_uri(run_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store shared by the runs beside this one."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.resolve().parent / MLFLOW_DB}"


def _start_failed(sink: str, err: BaseException, detail: str = "") -> TuneforgeError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return TuneforgeError(
        f"the {sink} logger could not start{detail}: {first}",
        where="train.log_to",
        fix=f"fix the {sink} setup (for MLflow: MLFLOW_TRACKING_URI, e.g. sqlite:///mlflow.db), or remove "
        f"{sink} from train.log_to",
    )


class Trackers:
    """Fan each metrics record out to every configured sink (only the main process writes)."""

    def __init__(
        self,
        run_dir: Path,
        sinks: list[str],
        *,
        config: dict[str, Any],
        enabled: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.tb: Any = None
        self.mlflow: Any = None
        self.wandb: Any = None
        self.jsonl = None
        if not enabled:
            return
        check_sinks(sinks)
        ids_path = run_dir / IDS_FILE
        ids: dict[str, str] = (
            dict(read_json(ids_path)) if resume_step is not None and ids_path.is_file() else {}
        )
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        sink = ""
        try:
            for sink in sinks:
                self._start(sink, run_dir, config, ids, resume_step)
        except TuneforgeError:
            self.close()
            raise
        except Exception as err:  # a logger's own start-up failure: one line for the user
            self.close()
            raise _start_failed(sink, err) from None
        if ids:
            write_json_atomic(ids_path, ids)

    def _start(
        self, sink: str, run_dir: Path, config: dict[str, Any], ids: dict[str, str], resume_step: int | None
    ) -> None:
        if sink == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a crashed run wrote after its last checkpoint: this run redoes them.
            purge = resume_step + 1 if resume_step is not None else None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        if sink == "mlflow":
            import mlflow

            mlflow.set_tracking_uri(mlflow_uri(run_dir))
            mlflow.set_experiment("tuneforge")
            active = mlflow.start_run(run_id=ids.get("mlflow_run_id"), run_name=run_dir.name)
            if "mlflow_run_id" not in ids:
                mlflow.log_params(_flatten(config))  # params are immutable in MLflow: log them once per run
            ids["mlflow_run_id"] = active.info.run_id
            self.mlflow = mlflow
        if sink == "wandb":
            import wandb

            ids.setdefault("wandb_id", wandb.util.generate_id())
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "tuneforge"),
                name=run_dir.name,
                id=ids["wandb_id"],
                resume="allow",
                config=config,
                dir=str(run_dir),
            )

    def log(self, record: dict[str, Any]) -> None:
        if self.jsonl is None:
            return
        self.jsonl.write(json.dumps(to_json_numbers(record), allow_nan=False) + "\n")
        self.jsonl.flush()
        step = int(record["step"])
        prefix = f"{record['split']}/" if "split" in record else "train/"
        numbers = {
            k: float(v)
            for k, v in record.items()
            if isinstance(v, int | float) and k not in ("step", "split")
        }
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(prefix + k, v, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(
                {(prefix + k).replace("/", "_"): v for k, v in numbers.items()}, step=step
            )
        if self.wandb is not None:
            self.wandb.log({prefix + k: v for k, v in numbers.items()}, step=step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
        if self.wandb is not None:
            self.wandb.finish()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:250]  # MLflow's limit on a param value is 500 characters
    return out


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop records past a checkpoint (a resumed run re-does those steps and logs them again).

    A process killed mid-write can leave a last line cut short; it is dropped too.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= after_step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def environment(accelerator: Any, seed: int) -> dict[str, Any]:
    """What a run ran on, for its manifest: versions, hardware, seed and the user's git commit."""
    import peft
    import torch
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "platform": platform.platform(),
        "hardware": {
            "machine": platform.machine(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "torch_threads": torch.get_num_threads(),  # train.num_threads as applied
        "seed": seed,
        "git": git_state(Path.cwd()),
    }
    return env


def git_state(path: Path) -> dict[str, Any] | None:
    """The commit (and whether there are uncommitted changes) of the git work tree at `path`, if any."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=path, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}
