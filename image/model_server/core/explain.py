"""Per-column contributions, computed in the server: ``baseline + sum(contributions) == explained value``.

Two exact decompositions, on the final estimator's input (after any compiled preprocessing), then
summed back to the columns a client sent (a one-hot encoded column's pieces add up to its column):

* **linear models** (LinearRegression, Ridge, Lasso, ..., LogisticRegression and other linear
  classifiers): ``coef_j * (x_j - reference_j)``; the baseline is the model's value at the reference,
  the mean of the model's input over the training sample when the artifact records it (else the
  model's input for the signature's typical row). Classifiers explain their decision value: the
  positive class's log-odds (binary) or the predicted class's score (multiclass).
* **trees and forests** (DecisionTree, RandomForest, ExtraTrees; one output): Saabas' path
  decomposition. Walking a row from the root to its leaf, each split moves the node value by
  ``value(child) - value(parent)``, credited to the split's feature; the baseline is the root value
  (the training mean). A forest averages its trees. Regressors explain ``predict``; classifiers the
  probability of the positive class (binary) or of the predicted class (multiclass).

Other estimators have no explanation here: requesting one is a 422 saying so. Each explainer
checks its own additivity on probe rows when the model loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

CONTRIBUTIONS, BASELINE = "contributions", "baseline"
OUTPUTS = (CONTRIBUTIONS, BASELINE)
SUPPORTED = "linear models (LinearRegression, Ridge, LogisticRegression, ...) and RandomForest/ExtraTrees/DecisionTree"


# final estimator input (rows, k) -> (contributions (rows, k), baseline (rows,), explained value (rows,))
Decompose = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


class NotExplainable(Exception):
    """This estimator has no exact decomposition here."""


@dataclass(frozen=True)
class Explainer:
    explains: str  # what the baseline and contributions add up to, for the output's parameters
    method: str
    decompose: Decompose
    origins: np.ndarray  # encoded column -> signature column
    columns: int

    def explain(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Contributions per signature column (rows, columns) and the baseline (rows,)."""
        encoded, baseline, _ = self.decompose(matrix)
        return self.sum_back(encoded), baseline

    def sum_back(self, encoded: np.ndarray) -> np.ndarray:
        out = np.zeros((encoded.shape[0], self.columns))
        np.add.at(out.T, self.origins, encoded.T)
        return out

    def check(self, matrix: np.ndarray) -> str | None:
        """None when baseline + contributions reproduce the explained value on ``matrix`` to 1e-6."""
        encoded, baseline, value = self.decompose(matrix)
        total = baseline + self.sum_back(encoded).sum(axis=1)
        worst = float(np.max(np.abs(total - value))) if len(value) else 0.0
        return None if worst <= 1e-6 else f"baseline + contributions misses the explained value by {worst:.3g}"


def _label(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


# ---- linear ------------------------------------------------------------------------------------------


def linear(model: Any, reference: np.ndarray) -> tuple[str, Decompose]:
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    coef = np.asarray(getattr(model, "coef_", None))
    if coef.dtype == object or coef.ndim == 0:
        raise NotExplainable(f"{type(model).__name__} has no linear coefficients")
    intercept = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
    if isinstance(model, LinearClassifierMixin):
        classes = model.classes_
        if coef.shape[0] == 1:
            weights, bias = coef[0], intercept[0]

            def binary(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                contributions = weights * (matrix - reference)
                baseline = np.full(len(matrix), bias + weights @ reference)
                return contributions, baseline, matrix @ weights + bias

            return f"decision_function: the log-odds (score) of class {_label(classes[1])}", binary

        def multiclass(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            scores = matrix @ coef.T + intercept
            chosen = np.argmax(scores, axis=1)
            weights = coef[chosen]
            contributions = weights * (matrix - reference)
            baseline = intercept[chosen] + weights @ reference
            return contributions, baseline, scores[np.arange(len(matrix)), chosen]

        return "decision_function of the predicted class", multiclass
    if not isinstance(model, LinearModel) or coef.ndim != 1:
        raise NotExplainable(f"{type(model).__name__} is not a single-output linear model")
    bias = float(intercept[0])

    def regression(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        contributions = coef * (matrix - reference)
        baseline = np.full(len(matrix), bias + coef @ reference)
        return contributions, baseline, matrix @ coef + bias

    return "predict", regression


# ---- trees: Saabas -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tree:
    tree: Any  # sklearn's Cython Tree
    parent: np.ndarray
    feature_of_parent: np.ndarray
    values: np.ndarray  # (nodes, classes or 1)


def _prepare(tree: Any, width: int) -> _Tree:
    left, right = tree.children_left, tree.children_right
    parent = np.full(tree.node_count, -1, dtype=np.intp)
    for children in (left, right):
        inner = np.flatnonzero(children >= 0)
        parent[children[inner]] = inner
    feature_of_parent = np.where(parent >= 0, tree.feature[np.maximum(parent, 0)], -1)
    return _Tree(tree, parent, feature_of_parent, np.asarray(tree.value)[:, 0, :width])


def trees(model: Any) -> tuple[str, Decompose]:
    from sklearn.ensemble._forest import ForestClassifier, ForestRegressor
    from sklearn.tree import BaseDecisionTree

    if isinstance(model, ForestClassifier | ForestRegressor):
        estimators = model.estimators_
    elif isinstance(model, BaseDecisionTree):
        estimators = [model]
    else:
        raise NotExplainable(f"{type(model).__name__} is not a tree or a forest of them")
    if model.n_outputs_ != 1:
        raise NotExplainable(f"{type(model).__name__} has {model.n_outputs_} outputs")
    classifier = hasattr(model, "classes_")
    width = len(model.classes_) if classifier else 1
    prepared = [_prepare(estimator.tree_, width) for estimator in estimators]
    count = len(prepared)

    def decompose(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x32 = np.ascontiguousarray(matrix, dtype=np.float32)
        rows = len(x32)
        # The model's own answer (the mean of the leaves' values): the explained value, and for a
        # multiclass model which class is explained.
        leaf_mean = sum(p.values[p.tree.apply(x32)] for p in prepared) / count
        if classifier:
            explained = np.full(rows, 1) if width == 2 else np.argmax(leaf_mean, axis=1)
        else:
            explained = np.zeros(rows, dtype=np.intp)
        contributions = np.zeros((rows, matrix.shape[1]))
        baseline = np.zeros(rows)
        for p in prepared:
            path = p.tree.decision_path(x32)
            row_of = np.repeat(np.arange(rows), np.diff(path.indptr))
            nodes = path.indices
            steps = p.parent[nodes] >= 0
            row_of, nodes = row_of[steps], nodes[steps]
            column = explained[row_of]
            delta = p.values[nodes, column] - p.values[p.parent[nodes], column]
            np.add.at(contributions, (row_of, p.feature_of_parent[nodes]), delta)
            baseline += p.values[0, explained]
        contributions /= count
        baseline /= count
        return contributions, baseline, leaf_mean[np.arange(rows), explained]

    if classifier:
        what = (
            f"predict_proba of class {_label(model.classes_[1])}"
            if width == 2
            else "predict_proba of the predicted class"
        )
    else:
        what = "predict"
    return what, decompose


def explainer_for(final: Any, origins: np.ndarray, columns: int, reference: np.ndarray | None) -> Explainer:
    """The explainer for ``final`` (the estimator the encoded matrix goes to), or NotExplainable."""
    try:
        explains, decompose = linear(final, reference if reference is not None else np.zeros(len(origins)))
        method = "linear: coefficient × (x − training mean of the model's input)"
    except NotExplainable:
        explains, decompose = trees(final)
        method = "Saabas path decomposition (tree by tree, averaged)"
    except (ImportError, AttributeError) as exc:
        raise NotExplainable(str(exc)) from None
    return Explainer(explains, method, decompose, np.asarray(origins, dtype=np.intp), columns)
