"""Classical baselines on the same split: does the fine-tuned LLM beat a majority vote and a linear model?

Both are fitted on the dataset's train split with scikit-learn (seconds on CPU) and scored with the very
metric functions the models get, so the numbers sit beside base and tuned in one table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneforge.evaluation.metric_table import METRICS, metric_of
from tuneforge.evaluation.metrics import classification_metrics, regression_metrics
from tuneforge.evaluation.stats import bootstrap_ci, compare

if TYPE_CHECKING:
    from tuneforge.evaluation.model_eval import ModelEval


def classification_baselines(
    train: list[dict[str, Any]], test: list[dict[str, Any]], labels: list[str]
) -> dict[str, dict[str, Any]]:
    """Majority class and TF-IDF (word 1-2 grams) + logistic regression; metrics and predictions of each."""
    from sklearn.dummy import DummyClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    x_train, y_train = [str(r.get("text", "")) for r in train], [str(r["label"]) for r in train]
    x_test, y_test = [str(r.get("text", "")) for r in test], [str(r["label"]) for r in test]
    out: dict[str, dict[str, Any]] = {}
    majority = DummyClassifier(strategy="most_frequent").fit(x_train, y_train)
    models: dict[str, Any] = {"majority": majority}
    if len(set(y_train)) > 1:
        models["tfidf_logreg"] = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            # saga, the solver scikit-learn recommends for large sparse inputs: on the quickstart's 21k tweets
            # (189k 1-2 grams) it fits in 4 s where lbfgs took 27 s, to the same optimum (macro-F1 0.686 vs
            # 0.683 on its 200 test tweets). Seeded: saga visits the rows in a random order.
            LogisticRegression(max_iter=1000, C=10.0, solver="saga", random_state=0),
        ).fit(x_train, y_train)
    for name, model in models.items():
        pred = [str(p) for p in model.predict(x_test)]
        out[name] = {"metrics": classification_metrics(y_test, pred, labels), "predictions": pred}
    return out


def regression_baselines(
    train: list[dict[str, Any]], test: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The train mean and TF-IDF + ridge regression."""
    from sklearn.dummy import DummyRegressor
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    x_train, y_train = [str(r.get("text", "")) for r in train], [float(r["label"]) for r in train]
    x_test, y_test = [str(r.get("text", "")) for r in test], [float(r["label"]) for r in test]
    models: dict[str, Any] = {
        "mean": DummyRegressor(strategy="mean").fit(x_train, y_train),
        "tfidf_ridge": make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), Ridge()).fit(
            x_train, y_train
        ),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        pred = [float(p) for p in model.predict(x_test)]
        out[name] = {"metrics": regression_metrics(y_test, pred), "predictions": pred}
    return out


def baselines(
    fmt: str, train: list[dict[str, Any]], test: list[dict[str, Any]], labels: list[str]
) -> dict[str, dict[str, Any]]:
    """The baselines that apply to a dataset format (none for chat/instruction/text)."""
    if not train or not test:
        return {}
    if fmt == "classification":
        return classification_baselines(train, test, labels)
    if fmt == "regression":
        return regression_baselines(train, test)
    return {}


#: The per-example score a baseline is tested on against the tuned model, per format, and its metric.
HEADLINE = {"classification": ("correct", "accuracy"), "regression": ("squared_error", "mse")}
ANSWERS = ("token_f1", "token_f1")  # chat/instruction answers (the few-shot baseline)


def compare_baselines(
    fmt: str,
    records: list[dict[str, Any]],
    tuned: ModelEval,
    baselines: dict[str, Any],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Each baseline's metrics, its interval and its paired test against the tuned model (the eval JSON's
    baselines section).

    A baseline that brings its own per-example scores (`per_example`: the few-shot base) is tested on them
    and gets an interval for each metric that is their mean; a classical one is scored from its predictions.
    """
    out: dict[str, Any] = {}
    for name, b in baselines.items():
        entry: dict[str, Any] = {"metrics": b["metrics"]}
        per: dict[str, list[float]] = dict(b.get("per_example") or {})
        score, metric = HEADLINE.get(fmt, ANSWERS)
        if score not in per and fmt == "classification":
            per[score] = [
                float(str(p) == str(r["label"])) for p, r in zip(b["predictions"], records, strict=True)
            ]
        elif score not in per and fmt == "regression":
            per[score] = [
                (float(p) - float(r["label"])) ** 2 for p, r in zip(b["predictions"], records, strict=True)
            ]
        if n_boot > 0 and records and score in per and score in tuned.per_example:
            c = compare(
                metric,
                tuned.per_example[score],
                per[score],
                n_boot=n_boot,
                seed=seed,
                correct=score == "correct",
                names=("tuned", name),
            )
            entry["vs_tuned"] = {"metric": metric, **c["paired"], "verdict": c["verdict"]}
            entry["ci"] = {metric: c["base"]}  # the baseline's own interval, beside base's and tuned's
            for other, values in per.items():  # the rest of its mean-of-examples metrics, for the table
                m = METRICS.get(metric_of(other))
                if m is not None and m.aggregation == "mean" and m.name not in entry["ci"]:
                    entry["ci"][m.name] = bootstrap_ci(values, n_boot=n_boot, seed=seed)
        out[name] = entry
    return out
