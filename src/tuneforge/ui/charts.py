"""Inline SVG line charts: the geometry a template draws (no chart library, no script, works offline).

Hand-written because it is about 60 lines and a chart library would be the UI's only JavaScript besides HTMX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

W, H = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 12, 30
MAX_POINTS = 600  # a long run is thinned to this many points per curve (a chart is 640 pixels wide)
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


@dataclass
class Chart:
    title: str
    width: int
    height: int
    curves: list[dict[str, Any]]  # name, colour, points ("x,y x,y ..."), dots (few points: markers), last
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    plot: tuple[int, int, int, int]  # left, top, right, bottom in pixels
    skipped: int  # NaN/inf values left out


def _ticks(lo: float, hi: float, n: int = 5, whole: bool = False) -> list[float]:
    """About n round tick values between lo and hi; `whole`: no fractions (optimizer steps)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    if whole:
        step = max(step, 1.0)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def line_chart(title: str, series: dict[str, Any]) -> Chart | None:
    """One chart of named curves of (x, y) pairs, or None when no curve has a finite point."""
    # A hand-edited or foreign metrics file may hold anything: only number pairs are drawn.
    series = {k: [(x, y) for x, y in pts if _num(x) and _num(y)] for k, pts in series.items()}
    skipped = sum(1 for pts in series.values() for _, y in pts if not math.isfinite(y))
    clean = {k: [(x, y) for x, y in pts if math.isfinite(y)] for k, pts in series.items()}
    # A curve keeps the colour of its place in `series` even when an earlier one is empty (compare: a run's
    # colour is the same in every chart).
    colour = {k: COLOURS[i % len(COLOURS)] for i, k in enumerate(series)}
    clean = {k: v for k, v in clean.items() if v}
    if not clean:
        return None
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    px0, px1, py0, py1 = LEFT, W - RIGHT, TOP, H - BOTTOM

    def sx(x: float) -> float:
        return px0 + (x - x0) / (x1 - x0) * (px1 - px0)

    def sy(y: float) -> float:
        return py1 - (y - y0) / (y1 - y0) * (py1 - py0)

    curves = []
    for name, pts in clean.items():
        stride = max(1, math.ceil(len(pts) / MAX_POINTS))
        shown = pts[::stride] if pts[-1] in pts[::stride] else [*pts[::stride], pts[-1]]
        xy = [(round(sx(x), 1), round(sy(y), 1)) for x, y in shown]
        curves.append(
            {
                "name": name,
                "colour": colour[name],
                "points": " ".join(f"{x},{y}" for x, y in xy),
                "dots": xy if len(xy) <= 30 else [],
                "last": _label(pts[-1][1]),
                "n": len(pts),
            }
        )
    return Chart(
        title=title,
        width=W,
        height=H,
        curves=curves,
        x_ticks=[(round(sx(t), 1), _label(t)) for t in _ticks(x0, x1, whole=True) if t >= x0],
        y_ticks=[(round(sy(t), 1), _label(t)) for t in _ticks(y0, y1)],
        plot=(px0, py0, px1, py1),
        skipped=skipped,
    )


def training_charts(metrics: list[dict[str, Any]]) -> list[Chart]:
    """Loss (train and validation), the other validation metrics, learning rate and tokens/s of a run."""
    from tuneforge.train.plot import loss_series

    train = [m for m in metrics if "split" not in m and isinstance(m.get("step"), int | float)]
    val = [m for m in metrics if m.get("split") == "validation" and isinstance(m.get("step"), int | float)]
    loss_train, loss_val = loss_series(metrics)
    charts = [line_chart("loss", {"train loss": loss_train, "validation loss": loss_val})]
    others = sorted(
        {str(k) for m in val for k, v in m.items() if k not in ("step", "split", "loss") and _num(v)}
    )
    if others:
        charts.append(
            line_chart(
                "validation metrics",
                {k: [(m["step"], float(m[k])) for m in val if _num(m.get(k))] for k in others},
            )
        )
    # the legend names the curve for a reader: "lr" and "tokens_per_s" are the metrics file's keys
    for key, title, name in (
        ("lr", "learning rate", "lr"),
        ("tokens_per_s", "tokens per second", "tokens/s"),
    ):
        charts.append(
            line_chart(title, {name: [(m["step"], float(m[key])) for m in train if _num(m.get(key))]})
        )
    return [c for c in charts if c is not None]


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
