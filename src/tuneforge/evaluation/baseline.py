"""Classical baselines on the same split: does the fine-tuned LLM beat a majority vote and a linear model?

Both are fitted on the dataset's train split with scikit-learn (seconds on CPU) and scored with the very
metric functions the models get, so the numbers sit beside base and tuned in one table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneforge.evaluation.metrics import classification_metrics, regression_metrics
from tuneforge.evaluation.stats import compare

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
            LogisticRegression(max_iter=1000, C=10.0),
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


def compare_baselines(
    fmt: str,
    records: list[dict[str, Any]],
    tuned: ModelEval,
    baselines: dict[str, Any],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Each baseline's metrics, its interval and its paired test against the tuned model (the eval JSON's
    baselines section)."""
    out: dict[str, Any] = {}
    for name, b in baselines.items():
        entry: dict[str, Any] = {"metrics": b["metrics"]}
        if fmt == "classification":
            theirs = [
                float(str(p) == str(r["label"])) for p, r in zip(b["predictions"], records, strict=True)
            ]
            mine, metric = tuned.per_example["correct"], "accuracy"
        else:
            theirs = [
                (float(p) - float(r["label"])) ** 2 for p, r in zip(b["predictions"], records, strict=True)
            ]
            mine, metric = tuned.per_example["squared_error"], "mse"
        if n_boot > 0 and records:
            c = compare(
                metric,
                mine,
                theirs,
                n_boot=n_boot,
                seed=seed,
                correct=metric == "accuracy",
                names=("tuned", name),
            )
            entry["vs_tuned"] = {**c["paired"], "verdict": c["verdict"]}
            entry["ci"] = {metric: c["base"]}  # the baseline's own interval, beside base's and tuned's
        out[name] = entry
    return out
