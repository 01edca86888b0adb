"""Scores of generated answers against references: BLEU, chrF, TER, ROUGE, exact match, token-F1, length.

Corpus scores come from sacrebleu and rouge-score as the field reports them; per-example scores (the same
metrics on one answer) feed the bootstrap intervals, the paired tests and the fairness tables.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from tuneforge.evaluation.metric_table import METRICS

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

#: Per-example metrics written for every generated answer (names as in predictions.jsonl and eval JSON).
PER_EXAMPLE = ("bleu", "chrf", "ter", *ROUGE_TYPES, "exact_match", "token_f1", "length_ratio")


def normalize_answer(s: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, ref: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token-F1: overlap of the normalised bags of words (hand-written, as in SQuAD's script)."""
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _words(s: str) -> int:
    return len(s.split())


def per_example_scores(preds: list[str], refs: list[str]) -> list[dict[str, float]]:
    """Each answer's own BLEU/chrF/TER (sentence level, sacrebleu), ROUGE F-measures, EM, F1, length ratio."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF, TER

    # effective_order: a one-sentence BLEU without it is 0 whenever a 4-gram is missing.
    bleu, chrf, ter = BLEU(effective_order=True), CHRF(), TER()
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out = []
    for p, r in zip(preds, refs, strict=True):
        rouge = scorer.score(r, p)
        out.append(
            {
                "bleu": float(bleu.sentence_score(p, [r]).score),
                "chrf": float(chrf.sentence_score(p, [r]).score),
                "ter": float(ter.sentence_score(p, [r]).score),
                **{k: float(rouge[k].fmeasure) for k in ROUGE_TYPES},
                "exact_match": exact_match(p, r),
                "token_f1": token_f1(p, r),
                "length_ratio": _words(p) / max(_words(r), 1),
            }
        )
    return out


def corpus_statistics(preds: list[str], refs: list[str]) -> dict[str, Callable[[np.ndarray], float]]:
    """Corpus BLEU/chrF/TER and the length ratio of any subset of the examples (indices → score).

    This is sacrebleu's own paired-bootstrap method (sacrebleu.significance): each sentence's sufficient
    statistics are extracted once, and a subset's corpus score is computed from their sum, so a resample costs
    a sum rather than a re-tokenisation. The private methods used are the ones sacrebleu's significance module
    calls; on the whole corpus they give exactly `corpus_score`.
    """
    from sacrebleu.metrics import BLEU, CHRF, TER

    out: dict[str, Callable[[np.ndarray], float]] = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        stats = np.asarray(metric._extract_corpus_statistics(preds, [refs]))  # (N, S)

        def score(idx: np.ndarray, metric: Any = metric, stats: np.ndarray = stats) -> float:
            return float(metric._compute_score_from_stats(stats[idx].sum(axis=0).tolist()).score)

        out[name] = score
    words = np.array([[_words(p), _words(r)] for p, r in zip(preds, refs, strict=True)], dtype=float)
    words = words.reshape(-1, 2)  # (N, 2): answer words, reference words

    def length_ratio(idx: np.ndarray) -> float:
        return float(words[idx, 0].sum() / max(words[idx, 1].sum(), 1.0))

    out["length_ratio"] = length_ratio
    return out


def corpus_scores(preds: list[str], refs: list[str]) -> dict[str, Any]:
    """Corpus-level BLEU/chrF/TER (sacrebleu's definition, not a mean of sentences) and mean ROUGE/EM/F1."""
    per = per_example_scores(preds, refs)
    n = max(len(per), 1)
    mean = {k: sum(row[k] for row in per) / n for k in PER_EXAMPLE}
    pred_words, ref_words = sum(map(_words, preds)), sum(map(_words, refs))
    everything = np.arange(len(preds))
    corpus = {k: f(everything) for k, f in corpus_statistics(preds, refs).items()} if preds else {}
    # A corpus-level metric (the table's "statistic") is not the mean of its per-example values.
    return {
        "n": len(preds),
        **{
            k: corpus.get(k, float("nan")) if METRICS[k].aggregation == "statistic" else mean[k]
            for k in PER_EXAMPLE
            if k != "length_ratio"  # after the word counts it is the ratio of
        },
        "mean_answer_words": pred_words / n,
        "mean_reference_words": ref_words / n,
        "length_ratio": pred_words / max(ref_words, 1),
    }


def semantic_similarity(
    preds: list[str], refs: list[str], model_name: str = "builtin:minilm-l6"
) -> list[float]:
    """Cosine similarity of mean-pooled sentence embeddings (MiniLM by default); optional, loads a model."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tuneforge.builtin import is_builtin, resolve

    path = str(resolve(model_name)) if is_builtin(model_name) else model_name
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # (B, T, D)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
        return torch.nn.functional.normalize(pooled, dim=-1)

    sims: list[float] = []
    for start in range(0, len(preds), 32):
        a, b = embed(preds[start : start + 32]), embed(refs[start : start + 32])
        sims.extend((a * b).sum(-1).tolist())
    return sims
