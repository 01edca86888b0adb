"""The loss curves of a run (training and validation loss against steps): loss.png and the report's plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Series = list[tuple[int, float]]


def loss_series(metrics: list[dict[str, Any]]) -> tuple[Series, Series]:
    """(step, loss) of the training records and of the validation records of metrics.jsonl."""
    train = [(m["step"], m["loss"]) for m in metrics if "split" not in m and "loss" in m]
    val = [(m["step"], m["loss"]) for m in metrics if m.get("split") == "validation" and "loss" in m]
    return train, val


def draw_loss_curves(ax: Any, train: Series, val: Series, ylabel: str = "loss") -> None:
    """Both curves on one matplotlib axis; a long, noisy training curve gets a moving average on top."""
    steps, losses = zip(*train, strict=True)
    noisy = len(train) > 50
    ax.plot(steps, losses, label="train loss", linewidth=1, alpha=0.35 if noisy else 1.0)
    if noisy:
        import numpy as np

        k = max(len(train) // 25, 2)
        smooth = np.convolve(np.asarray(losses, dtype=float), np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="C0", linewidth=1.6, label=f"train loss, mean of {k} steps")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", color="C1", label="validation loss")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no "1.2" ticks on short runs
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()


def plot_loss(metrics: list[dict[str, Any]], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    train, val = loss_series(metrics)
    if not train:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    draw_loss_curves(fig.add_subplot(), train, val)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    tmp.replace(out)
    return out
