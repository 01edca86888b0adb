"""Classical baselines on the same split: does the fine-tuned LLM beat a majority vote and a linear model?

Both are fitted on the dataset's train split with scikit-learn (seconds on CPU) and scored with the very
metric functions the models get, so the numbers sit beside base and tuned in one table.
"""

from __future__ import annotations

from typing import Any

from tuneforge.evaluation.metrics import classification_metrics, regression_metrics


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
