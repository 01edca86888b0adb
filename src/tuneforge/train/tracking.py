"""Where metrics go: metrics.jsonl always; TensorBoard, MLflow and W&B when asked for in `train.log_to`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError


class Trackers:
    """Fan each metrics record out to every configured sink (only the main process writes)."""

    def __init__(self, run_dir: Path, sinks: list[str], *, config: dict[str, Any], enabled: bool = True) -> None:
        self.enabled = enabled
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self.tb: Any = None
        self.mlflow: Any = None
        self.wandb: Any = None
        if not enabled:
            return
        if "tensorboard" in sinks:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "mlflow" in sinks:
            try:
                import mlflow
            except ImportError:
                raise TuneforgeError(
                    "train.log_to names mlflow but it is not installed", fix="pip install 'tuneforge[mlflow]'"
                ) from None
            if not mlflow.get_tracking_uri() or mlflow.get_tracking_uri().startswith("file:"):
                mlflow.set_tracking_uri(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
            mlflow.set_experiment("tuneforge")
            mlflow.start_run(run_name=run_dir.name)
            mlflow.log_params(_flatten(config))
            self.mlflow = mlflow
        if "wandb" in sinks:
            try:
                import wandb
            except ImportError:
                raise TuneforgeError("train.log_to names wandb but it is not installed", fix="pip install wandb") from None
            self.wandb = wandb.init(project="tuneforge", name=run_dir.name, config=config, dir=str(run_dir))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled or self.jsonl is None:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        step = int(record["step"])
        prefix = f"{record['split']}/" if "split" in record else "train/"
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and k not in ("step", "split")}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(prefix + k, v, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({(prefix + k).replace("/", "_"): v for k, v in numbers.items()}, step=step)
        if self.wandb is not None:
            self.wandb.log({prefix + k: v for k, v in numbers.items()}, step=step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
        if self.wandb is not None:
            self.wandb.finish()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:250]
    return out


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop records past a checkpoint: a resumed run re-does those steps and logs them again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in kept if json.loads(line).get("step", 0) <= after_step]
    from tuneforge.artifacts import write_text_atomic

    write_text_atomic(path, "".join(line + "\n" for line in kept))
