"""Every metric's facts, declared once: which way is better, its scale, the per-example score it is the mean
of, how it is aggregated (and so how its interval is computed), and its Hugging Face metric id for the card.

The statistics (verdicts, resample counts), the report's tables, the DPO answers section and the model card
all read this table, the way lm-evaluation-harness registers a metric's aggregation and direction with it.
A new metric is one more row. Order matters: it is the order of the report's comparison table and the card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: "near 1": neither direction is better in itself (an answer's length relative to the reference).
Better = Literal["higher", "lower", "near 1"]

#: How a metric is aggregated over examples, which decides how its interval is computed: the "mean" of
#: per-example scores (percentile bootstrap of the mean); a "statistic" of the whole set (corpus BLEU,
#: macro-F1, ECE, loss per target token), recomputed on each resample of whole examples; "exp" of the loss
#: (its interval is exp of the loss's: exp is monotone); "none": no interval (a ratio of counts, R²).
Aggregation = Literal["mean", "statistic", "exp", "none"]


@dataclass(frozen=True)
class HubMetric:
    """How model-index names a metric: the id of huggingface.co/metrics, a display name, its arguments."""

    id: str
    display: str
    args: dict[str, Any] | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    better: Better
    scale: str
    """What the number is and its range, printed beside it so no number stands without its unit."""
    aggregation: Aggregation = "mean"
    mean_of: str | None = None
    """The per-example score this is the mean of, where its name differs (`correct` → accuracy)."""
    hub: HubMetric | None = None
    """Set for the metrics the model card lists (in this order)."""
    in_table: bool = True
    """Shown in the report's base-vs-tuned table."""
    max_resamples: int | None = None
    """A statistic slow to recompute (sklearn per resample) gets at most this many bootstrap resamples."""


_ROWS = (
    Metric("accuracy", "higher", "share of examples right, 0-1", mean_of="correct",
           hub=HubMetric("accuracy", "Accuracy")),
    Metric("macro_f1", "higher", "F1 averaged over labels, 0-1", "statistic", max_resamples=500,
           hub=HubMetric("f1", "Macro F1", {"average": "macro"})),
    Metric("weighted_f1", "higher", "F1 weighted by label frequency, 0-1", "none"),
    Metric("ece", "lower", "expected calibration error, 0-1", "statistic", max_resamples=500),
    Metric("brier", "lower", "Brier score, 0-2"),
    Metric("unparseable_rate", "lower", "share of answers naming no label", "none"),
    Metric("mse", "lower", "mean squared error, label units squared", mean_of="squared_error",
           hub=HubMetric("mse", "MSE")),
    Metric("mae", "lower", "mean absolute error, label units", mean_of="abs_error",
           hub=HubMetric("mae", "MAE")),
    Metric("r2", "higher", "R², 1 = perfect", "none"),
    Metric("loss", "lower", "cross-entropy, nats per target token", "statistic",
           hub=HubMetric("loss", "Loss (nats per target token)")),
    Metric("perplexity", "lower", "exp(loss)", "exp", hub=HubMetric("perplexity", "Perplexity")),
    Metric("bleu", "higher", "sacreBLEU, 0-100", "statistic", hub=HubMetric("bleu", "BLEU")),
    Metric("chrf", "higher", "chrF, 0-100", "statistic", hub=HubMetric("chrf", "chrF")),
    Metric("ter", "lower", "translation edit rate, edits per 100 reference words", "statistic"),
    Metric("rouge1", "higher", "ROUGE-1 F, 0-1"),
    Metric("rouge2", "higher", "ROUGE-2 F, 0-1"),
    Metric("rougeL", "higher", "ROUGE-L F, 0-1", hub=HubMetric("rouge", "ROUGE-L", {"rouge_type": "rougeL"})),
    Metric("exact_match", "higher", "share equal to the reference after normalising, 0-1"),
    Metric("token_f1", "higher", "SQuAD token F1, 0-1",
           hub=HubMetric("f1", "Token F1 (SQuAD)", {"normalization": "squad"})),
    Metric("length_ratio", "near 1", "answer words / reference words", "statistic"),
    Metric("semantic_similarity", "higher", "cosine similarity of MiniLM embeddings, -1-1"),
    # Not in the base-vs-tuned table: the mean of each example's own loss, regression's RMSE, and what the
    # answers of a DPO run are measured by (evaluation/answers.py).
    Metric("loss_per_example", "lower", "each example's cross-entropy per target token, mean over examples",
           mean_of="loss", in_table=False),
    Metric("rmse", "lower", "root mean squared error, label units", "none", in_table=False),
    Metric("answer_words", "near 1", "mean answer length, words", in_table=False),
    Metric("repetition_rate", "lower", "share of answers in a repeat loop", mean_of="repetition",
           in_table=False),
)  # fmt: skip

METRICS: dict[str, Metric] = {m.name: m for m in _ROWS}
_BY_SCORE = {m.mean_of: m.name for m in _ROWS if m.mean_of}


def metric_of(score: str) -> str:
    """The metric a per-example score is the mean of (`correct` → accuracy), or the score's own name."""
    return _BY_SCORE.get(score, score)


def better(name: str) -> Better:
    """Which way is better for a metric or a per-example score; one not in the table: higher."""
    m = METRICS.get(name) or METRICS.get(metric_of(name))
    return m.better if m else "higher"
