"""Per-column contributions, computed in the server: ``baseline + sum(contributions) == explained value``.

Two exact decompositions, on the final estimator's input (after any compiled preprocessing), then
summed back to the columns a client sent (a one-hot encoded column's pieces add up to its column):

* **linear models** (LinearRegression, Ridge, Lasso, ..., LogisticRegression and other linear
  classifiers): ``coef_j * (x_j - reference_j)``; the baseline is the model's value at the reference,
  the mean of the model's input over the training sample when the artifact records it (else the
  model's input for the signature's typical row). Classifiers explain their decision value: the
  positive class's log-odds (binary) or the predicted class's score (multiclass).
* **tree ensembles** (DecisionTree, RandomForest, ExtraTrees, GradientBoosting, HistGradientBoosting):
  exact Shapley values, path-dependent TreeSHAP as SHAP's TreeExplainer computes them (treeshap.py); the
  baseline is the expected output over the training cover. Regressors explain ``predict``; forest and
  tree classifiers the probability of the positive class (binary) or of the predicted class (multiclass);
  gradient-boosted classifiers their decision value (log-odds, or the predicted class's raw score).

Other estimators have no explanation here: requesting one is a 422 saying so. Each explainer
checks its own additivity on probe rows when the model loads, and a tree explainer that the value it
explains is scikit-learn's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import compiled, treeshap

CONTRIBUTIONS, BASELINE = "contributions", "baseline"
OUTPUTS = (CONTRIBUTIONS, BASELINE)
# The estimator families explained here; a refusal names them only to a model outside them.
FAMILIES = {
    "linear models": ("LinearRegression", "Ridge", "Lasso", "ElasticNet", "LogisticRegression", "..."),
    "tree ensembles": ("DecisionTree", "RandomForest", "ExtraTrees", "GradientBoosting", "HistGradientBoosting"),
}
SUPPORTED = " and ".join(f"{kind} ({', '.join(names)})" for kind, names in FAMILIES.items())


def refusal(estimator: str, reason: str) -> str:
    """Why ``estimator`` has no explanation: for a family explained here, only the reason (this model's
    configuration is what is not covered); otherwise also which families are."""
    if any(name in estimator for names in FAMILIES.values() for name in names if name != "..."):
        return f"explanations are not available for this {estimator}: {reason}"
    return f"explanations are not supported for this model ({reason}); they are for {SUPPORTED}"


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
    # scikit-learn's own value of what is explained: checked against the decomposition's at load
    truth: Callable[[np.ndarray], np.ndarray] | None = None
    handles_missing: bool = False  # trees route NaN as scikit-learn does; a linear model has no value for it

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
        if self.truth is not None and len(value):
            with warnings.catch_warnings():  # a model fitted on a DataFrame warns that an array has no names
                warnings.simplefilter("ignore", UserWarning)
                off = float(np.max(np.abs(self.truth(matrix) - value)))
            if not off <= 1e-6:
                return f"the explained value differs from scikit-learn's by {off:.3g}"
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


# ---- trees: exact TreeSHAP ------------------------------------------------------------------------


def _tree_ensemble(model: Any) -> tuple[treeshap.Ensemble, Callable[[np.ndarray], np.ndarray], str]:
    """The model's leaves, scikit-learn's own raw outputs for the load-time check, and what they are."""
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.ensemble import BaseEnsemble
    from sklearn.ensemble._forest import ForestClassifier, ForestRegressor
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import BaseHistGradientBoosting
    from sklearn.tree import BaseDecisionTree

    name = type(model).__name__
    classifier = hasattr(model, "classes_")
    if isinstance(model, ForestClassifier | ForestRegressor | BaseDecisionTree):
        if model.n_outputs_ != 1:
            raise NotExplainable(f"{name} has {model.n_outputs_} outputs")
        estimators = model.estimators_ if isinstance(model, BaseEnsemble) else [model]
        width = len(model.classes_) if classifier else 1
        truth = model.predict_proba if classifier else lambda m: np.asarray(model.predict(m)).reshape(-1, 1)
        return treeshap.forest(estimators, classifier, width), truth, "predict_proba" if classifier else "predict"
    if isinstance(model, BaseGradientBoosting):
        if not (model.init_ == "zero" or isinstance(model.init_, DummyClassifier | DummyRegressor)):
            raise NotExplainable(f"{name} with an init estimator: its initial prediction varies by row")
        constant = np.asarray(model._raw_predict_init(np.zeros((1, model.n_features_in_))))[0]
        ensemble = treeshap.gradient_boosting(model, constant)
    elif isinstance(model, BaseHistGradientBoosting):
        if not classifier and type(model._loss.link).__name__ != "IdentityLink":
            raise NotExplainable(f"{name} with loss {model.loss!r}: its prediction is not the trees' sum")
        ensemble = treeshap.hist_gradient_boosting(model)
    else:
        raise NotExplainable(f"{name} is not a tree ensemble explained here")
    if classifier:

        def scores(matrix: np.ndarray) -> np.ndarray:
            return np.asarray(model.decision_function(matrix)).reshape(len(matrix), -1)

        return ensemble, scores, "decision_function"
    return ensemble, lambda m: np.asarray(model.predict(m)).reshape(-1, 1), "predict"


def trees(model: Any) -> tuple[str, Decompose, Callable[[np.ndarray], np.ndarray]]:
    """Exact Shapley values (treeshap.py) of the tree ensembles scikit-learn fits."""
    try:
        ensemble, truth, kind = _tree_ensemble(model)
    except treeshap.TooLarge as exc:
        raise NotExplainable(f"{type(model).__name__} is too large to explain exactly here: {exc}") from None
    try:  # HistGradientBoosting's own category encoding before its trees, as the compiled path rebuilds it
        own_encoding = compiled.hgb_own_encoding(model)
    except compiled.NotCompilable as exc:
        raise NotExplainable(str(exc)) from None
    expected = ensemble.baseline()
    outputs = expected.shape[0]
    pick_predicted = outputs > 2 or (outputs == 2 and kind != "predict_proba")
    # binary probabilities: the positive class; one raw output (regression, binary log-odds): that one
    fixed = 1 if outputs == 2 else 0

    def chosen(raw: np.ndarray) -> np.ndarray:
        return np.argmax(raw, axis=1) if pick_predicted else np.full(len(raw), fixed)

    def decompose(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        trees_input = matrix if own_encoding is None else own_encoding[0](matrix)
        raw = ensemble.predict(trees_input)
        output = chosen(raw)
        contributions = ensemble.shapley(trees_input, matrix.shape[1], output)
        if own_encoding is not None:  # back to the columns the model was given
            contributions[:, own_encoding[1]] = contributions.copy()
        return contributions, expected[output], raw[np.arange(len(raw)), output]

    def model_value(matrix: np.ndarray) -> np.ndarray:
        raw = truth(matrix)
        picked: np.ndarray = raw[np.arange(len(raw)), chosen(raw)]
        return picked

    classes = getattr(model, "classes_", None)
    if classes is None:
        what = "predict"
    elif kind == "predict_proba":
        what = (
            f"predict_proba of class {_label(classes[1])}" if outputs == 2 else "predict_proba of the predicted class"
        )
    else:
        what = (
            f"decision_function: the log-odds of class {_label(classes[1])}"
            if outputs == 1
            else "decision_function of the predicted class"
        )
    return what, decompose, model_value


def explainer_for(final: Any, origins: np.ndarray, columns: int, reference: np.ndarray | None) -> Explainer:
    """The explainer for ``final`` (the estimator the encoded matrix goes to), or NotExplainable."""
    try:
        explains, decompose = linear(final, reference if reference is not None else np.zeros(len(origins)))
        method = "linear: coefficient × (x − training mean of the model's input)"
        truth = None
    except NotExplainable:
        explains, decompose, truth = trees(final)
        method = "TreeSHAP: exact Shapley values, path-dependent (training cover)"
    except (ImportError, AttributeError) as exc:
        raise NotExplainable(str(exc)) from None
    origins = np.asarray(origins, dtype=np.intp)
    return Explainer(explains, method, decompose, origins, columns, truth, handles_missing=truth is not None)
