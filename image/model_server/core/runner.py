"""The model runner: calls the requested methods of one loaded estimator on a checked batch.

What the estimator can answer is found by asking it, once at load time, on an example row built
from the signature: each of ``predict``, ``predict_proba``, ``decision_function``, ``score_samples``
and ``transform`` that it has, with the datatype and shape its answer has. A request then names
the outputs it wants; the runner encodes the batch once (codecs.py) and calls each method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import MODEL_METHODS
from ..errors import ArtifactError, Unprocessable
from . import codecs, compiled, explain
from .columns import Batch
from .proof import Proof
from .signature import BOOL, BYTES, FP64, INT64, Output, Signature

log = logging.getLogger("model_server.core.runner")

Method = Callable[[Any], Any]
# Errors an estimator raises for values it cannot take (an unseen category, a NaN it cannot
# handle): the client's input, so a 422 naming what was refused, never a 500.
MODEL_INPUT_ERRORS = (ValueError, TypeError, ArithmeticError, IndexError, KeyError)
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class Description:
    task: str
    estimator: str
    classes: tuple[Any, ...] | None
    path: str  # how predictions are computed, for the load log line


def task_of(model: Any) -> str:
    from sklearn.utils import get_tags

    kind = get_tags(model).estimator_type
    return {
        "classifier": "classification",
        "regressor": "regression",
        "clusterer": "clustering",
        "outlier_detector": "outlier_detection",
    }.get(kind or "", "transform" if hasattr(model, "transform") else "other")


def classes_of(model: Any) -> tuple[Any, ...] | None:
    classes = getattr(model, "classes_", None)
    if classes is None or isinstance(classes, list):  # multi-output classifiers: one array per output
        return None
    return tuple(codecs.json_label(c) for c in np.asarray(classes))


def linear_fast_predictor(model: Any, width: int) -> Method | None:
    """The model's own arithmetic without sklearn's per-call input validation, for linear regressors.

    Only for estimators whose predict path is exactly LinearModel's (``X @ coef_ + intercept_``);
    the request checks already guarantee what that validation checks (float64, right width, finite).
    Proved equal, bit for bit, to ``model.predict`` on a probe batch before it is used.
    """
    try:
        from sklearn.linear_model import _base
    except ImportError:  # private module moved: fall back to model.predict
        return None
    linear_predicts = {
        getattr(getattr(_base, name, None), "predict", None) for name in ("LinearModel", "MultiOutputLinearModel")
    }
    cls = type(model)
    if cls.predict not in linear_predicts or cls._decision_function is not _base.LinearModel._decision_function:
        return None
    coef = np.asarray(model.coef_)
    coef = coef if coef.ndim == 1 else coef.T
    intercept = model.intercept_

    def predict(matrix: np.ndarray) -> np.ndarray:
        values: np.ndarray = matrix @ coef + intercept
        return values

    probe = np.random.default_rng(0).normal(size=(17, width))
    return predict if np.array_equal(predict(probe), model.predict(probe)) else None


class ModelRunner:
    def __init__(
        self,
        model: Any,
        signature: Signature,
        explain_reference: list[float] | None = None,
        *,
        compiled_paths: bool = True,
        proved: Proof | None = None,
    ) -> None:
        """``proved``: what proving this model found when it was packaged (proof.recorded), taken instead of
        proving again; only with compiled paths, since it was found with them."""
        self.model = model
        self.signature = signature
        self.codec = codecs.choose(signature)
        self.encode: Callable[[Batch], Any] = self.codec.encode
        self.methods: dict[str, Method] = {name: getattr(model, name) for name in MODEL_METHODS if hasattr(model, name)}
        # The estimator the encoded matrix reaches, and the signature column of each of its input
        # columns: known for models on a float matrix and for compiled pipelines (explanations).
        self._final: Any = None
        self._origins: np.ndarray | None = None
        path = f"model methods on a {self.codec.name}"
        # A bare estimator on numbers: its input is the columns themselves, whether it was fitted on an array or
        # on a DataFrame of numeric columns (the frame is only the names).
        numeric_frame = isinstance(self.codec, codecs.FrameCodec) and signature.numeric
        if (isinstance(self.codec, codecs.MatrixCodec) or numeric_frame) and not hasattr(model, "steps"):
            self._final, self._origins = model, np.arange(len(signature))
        is_matrix = isinstance(self.codec, codecs.MatrixCodec) and compiled_paths
        fast = linear_fast_predictor(model, len(signature)) if is_matrix else None
        if fast is not None and "predict" in self.methods:
            self.methods["predict"] = fast
            path = "linear fast path"
        elif compiled_paths:
            path = self._compile(path, proved)
        else:
            proved = None  # found with the compiled paths: says nothing of scikit-learn's own
        classes = classes_of(model)
        self.description = Description(task_of(model), type(model).__name__, classes, path)
        self.outputs = self._probe_outputs(classes)
        self.explainer: explain.Explainer | None = None
        self.unexplained = self._explainer(explain_reference, proved)

    def _explainer(self, reference: list[float] | None, proved: Proof | None = None) -> str:
        """Set up contributions and baseline where the model has an exact decomposition; else why not. Checked
        against scikit-learn's value on a probe batch, unless ``proved`` already says how that went."""
        if proved is not None and proved.unexplained:
            return proved.unexplained
        if self._final is None or self._origins is None:
            return (
                f"{self.description.estimator} is served by scikit-learn's own path, whose steps are not rebuilt here"
            )
        if (self._origins == compiled.MIXED).any():
            return (
                "its preprocessing multiplies input columns together (PolynomialFeatures' interaction terms), "
                "so no exact part per input column is computed here"
            )
        width = len(self._origins)
        vector = np.asarray(reference, dtype=np.float64) if reference is not None and len(reference) == width else None
        if vector is None:  # no training mean recorded: the typical row stands in (a numeric one: linear models)
            typical = _model_matrix(self.encode(self.example_batch()))
            vector = typical[0] if typical.dtype != object else None
        try:
            explainer = explain.explainer_for(self._final, self._origins, len(self.signature), vector)
        except explain.NotExplainable as exc:
            return str(exc)
        problem = None if proved is not None else self._check(explainer)
        if problem is not None:
            log.warning("explanations not served for this model: %s", problem)
            return problem
        self.explainer = explainer
        parameters = {"explains": explainer.explains, "method": explainer.method}
        self.outputs[explain.CONTRIBUTIONS] = Output(
            explain.CONTRIBUTIONS,
            FP64,
            (-1, len(self.signature)),
            {**parameters, "columns": list(self.signature.names)},
        )
        self.outputs[explain.BASELINE] = Output(explain.BASELINE, FP64, (-1,), parameters)
        return ""

    def model_input_mean(self, batch: Batch) -> list[float] | None:
        """The mean of the final estimator's input over ``batch``: the reference linear explanations
        subtract (the packager records it from the training sample)."""
        if self.explainer is None or not self.explainer.method.startswith("linear"):
            return None
        matrix = np.asarray(self.encode(batch), dtype=np.float64)
        return matrix.mean(axis=0).tolist() if np.isfinite(matrix).all() else None

    @property
    def final_estimator(self) -> Any:
        """The estimator that makes the predictions: a Pipeline's last step, else the model."""
        steps = getattr(self.model, "steps", None)
        return steps[-1][1] if steps else self.model

    def unavailable(self) -> dict[str, str]:
        """Outputs a client may name that this model cannot give, with the reason."""
        if self.explainer is not None:
            return {}
        reason = explain.refusal(type(self.final_estimator).__name__, self.unexplained)
        return dict.fromkeys(explain.OUTPUTS, reason)

    def _check(self, explainer: explain.Explainer) -> str | None:
        probe = _model_matrix(self.encode(compiled.probe_batches(self.signature)[0]))
        if not explainer.handles_missing:
            probe = probe[np.isfinite(probe).all(axis=1)]
        return explainer.check(probe) if len(probe) else "every probe row holds a missing value"

    def _compile(self, path: str, proved: Proof | None = None) -> str:
        """Use a compiled plan (compiled.py) when there is one and it answers the probes as sklearn does, or
        ``proved`` says it did when the model was packaged."""
        if proved is not None and proved.path == path:
            return path  # packaging found no plan, or one that disagreed
        try:
            candidate = compiled.plan(self.model, self.signature, tuple(self.methods))
            if proved is not None and proved.path == candidate.path:
                problem = None
            else:
                reference = compiled.Plan(self.encode, dict(self.methods), path)
                problem = compiled.prove(candidate, reference, compiled.probe_batches(self.signature))
        except compiled.NotCompilable as exc:
            log.debug("no compiled plan: %s", exc)
            return path
        if problem is not None:
            log.warning("compiled plan not used, it disagrees with scikit-learn: %s", problem)
            return path
        self.encode, self.methods = candidate.encode, dict(candidate.methods)
        self._final, self._origins = candidate.final, candidate.origins
        return candidate.path

    def example_batch(self, rows: int = 1) -> Batch:
        """A batch of the signature's example values: the load-time probe, smoke tests, docs."""
        columns = {}
        for column in self.signature.columns:
            dtype = {FP64: np.float64, INT64: np.int64, BOOL: bool, BYTES: object}[column.datatype]
            columns[column.name] = np.full(rows, column.example, dtype=dtype)
        return Batch(rows=rows, columns=columns)

    def _probe_outputs(self, classes: tuple[Any, ...] | None) -> dict[str, Output]:
        """Ask the model for each output on the example row: what it answers, typed and shaped."""
        example = self.example_batch()
        outputs: dict[str, Output] = {}
        for name, method in self.methods.items():
            try:
                raw = method(self.encode(example))
            except Exception as exc:
                raise ArtifactError(
                    f"the model's {name}() fails on an example row built from its signature "
                    f"({self.signature.example_row()}): {type(exc).__name__}: {_clip(exc)}"
                ) from None
            if isinstance(raw, list):  # one array per output of a multi-output classifier: not one tensor
                log.info("output %s is a list of arrays; not served", name)
                continue
            values = codecs.dense(raw)
            parameters: dict[str, Any] = {}
            if classes is not None and name in ("predict_proba", "decision_function"):
                if values.ndim == 2 and values.shape[1] == len(classes):
                    parameters["classes"] = list(classes)
                elif values.ndim == 1 and len(classes) == 2:
                    parameters["positive_class"] = classes[1]
            outputs[name] = Output(name, codecs.output_datatype(values), (-1, *values.shape[1:]), parameters)
        if not outputs:
            raise ArtifactError(f"{type(self.model).__name__} answers none of {', '.join(MODEL_METHODS)}")
        return outputs

    def run(self, batch: Batch, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Each requested output for ``batch``, typed as its Output says."""
        unavailable = self.unavailable()
        for name in names:
            if name in unavailable:
                raise Unprocessable(unavailable[name])
        model_input = self.encode(batch)
        results: dict[str, np.ndarray] = {}
        if explain.CONTRIBUTIONS in names or explain.BASELINE in names:
            assert self.explainer is not None
            with np.errstate(over="ignore", invalid="ignore"):
                contributions, baseline = self.explainer.explain(_model_matrix(model_input))
            results[explain.CONTRIBUTIONS], results[explain.BASELINE] = contributions, baseline
        for name in names:
            output = self.outputs[name]
            if name in results:
                values = results[name]
                if not np.isfinite(values).all():
                    raise Unprocessable(f"{name} is not finite for these inputs: values too large for this model")
                continue
            # Finite inputs can still overflow (1e308 * a coefficient): those rows are refused by
            # number below rather than answered null (JSON has no infinity) with a warning per request.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                try:
                    raw = self.methods[name](model_input)
                except MODEL_INPUT_ERRORS as exc:
                    raise Unprocessable(self._refusal(name, batch, exc)) from None
            values = codecs.as_datatype(codecs.dense(raw), output)
            if output.datatype == FP64 and not np.isfinite(values).all():
                bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
                rows = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
                raise Unprocessable(f"row(s) {rows} give a non-finite {name}: input values too large for this model")
            results[name] = values
        return results

    def _refusal(self, name: str, batch: Batch, exc: Exception) -> str:
        """Why the model refused the batch, naming the column when a category is the cause."""
        for column in self.signature.columns if "categor" in str(exc).lower() else ():
            if column.datatype == BYTES and column.categories:
                values = batch.column(self.signature, column.name)
                seen = set(column.categories)
                unseen = sorted({v for v in values if isinstance(v, str) and v not in seen})
                if unseen:
                    return (
                        f"column '{column.name}' has value(s) {', '.join(map(repr, unseen[:5]))} the model was not "
                        f"trained on (known: {', '.join(column.categories)}); the model's {name}() refused them"
                    )
        log.info("model refused a request: %s: %s", type(exc).__name__, _clip(exc))
        return f"the model's {name}() refused these inputs: {_clip(exc)}"


def _model_matrix(model_input: Any) -> np.ndarray:
    """What an explainer decomposes: the model's input as float64, or as the object block it is when the model
    encodes its own strings (compiled.hgb_own_encoding)."""
    matrix = np.asarray(model_input)
    return matrix if matrix.dtype == object else matrix.astype(np.float64, copy=False)


def _clip(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."
