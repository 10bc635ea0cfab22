"""Downstream utility: train a classifier on the synthetic corpus, test it on real held-out data.

The same two classifiers for every arm (Yue et al. 2023; Xie et al. 2024): TF-IDF + logistic
regression, and logistic regression on sentence embeddings. The ceiling is the same classifier
trained on the real private data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASSIFIERS = ("tfidf_logreg", "embedding_logreg")


def classification_scores(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over `labels` (the real held-out label set; a class never predicted has F1 0)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=list(labels), average="macro", zero_division=0)),
    }


def _fit_predict(train_x: object, train_y: Sequence[str], test_x: object, n_test: int, seed: int) -> list[str]:
    from sklearn.linear_model import LogisticRegression

    classes = sorted(set(train_y))
    if len(classes) == 1:  # logistic regression needs two classes; a one-class corpus predicts that class
        return [classes[0]] * n_test
    model = LogisticRegression(max_iter=1000, random_state=seed)
    model.fit(train_x, list(train_y))
    return [str(y) for y in model.predict(test_x)]


def tfidf_logreg(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                 test_labels: Sequence[str], labels: Sequence[str], seed: int = 0) -> dict[str, float]:
    """TF-IDF (word 1-2-grams, sublinear tf) + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(set(train_labels)) == 1:
        return classification_scores(test_labels, [train_labels[0]] * len(test_texts), labels)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    train_x = vectorizer.fit_transform(train_texts)
    predicted = _fit_predict(train_x, train_labels, vectorizer.transform(test_texts), len(test_texts), seed)
    return classification_scores(test_labels, predicted, labels)


def embedding_logreg(train_emb: np.ndarray, train_labels: Sequence[str], test_emb: np.ndarray,
                     test_labels: Sequence[str], labels: Sequence[str], seed: int = 0) -> dict[str, float]:
    """Logistic regression on sentence embeddings."""
    predicted = _fit_predict(train_emb, train_labels, test_emb, len(test_emb), seed)
    return classification_scores(test_labels, predicted, labels)


def downstream_utility(*, synthetic: tuple[Sequence[str], Sequence[str], np.ndarray],
                       private: tuple[Sequence[str], Sequence[str], np.ndarray],
                       real: tuple[Sequence[str], Sequence[str], np.ndarray], seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """{classifier: {"synthetic": scores, "private (ceiling)": scores}}; each arm is (texts, labels, embeddings)."""
    labels = sorted(set(real[1]))
    result: dict[str, dict[str, dict[str, float]]] = {name: {} for name in CLASSIFIERS}
    for arm, (texts, y, emb) in (("synthetic", synthetic), ("private (ceiling)", private)):
        result["tfidf_logreg"][arm] = tfidf_logreg(texts, y, real[0], real[1], labels, seed)
        result["embedding_logreg"][arm] = embedding_logreg(emb, y, real[2], real[1], labels, seed)
    return result
