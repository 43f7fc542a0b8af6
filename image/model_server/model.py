"""The served model: loaded once per worker, retried while it is bad, swapped in atomically when it turns good."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sklearn

from . import artifact, metrics
from .artifact import Artifact
from .errors import ArtifactError, ClientError

log = logging.getLogger("model_server.model")

# Requests are validated (finite, numeric, right shape) before predict; skipping sklearn's
# second pass over the data is the largest single saving on small requests.
sklearn.set_config(assume_finite=True)


Predictor = Callable[[np.ndarray], np.ndarray]


def fast_predictor(model: object, n_features: int) -> Predictor | None:
    """The model's own arithmetic without sklearn's per-call input validation, for linear models.

    Only for estimators whose predict path is exactly LinearModel's (``X @ coef_ + intercept_``);
    the request parsers already guarantee what that validation checks (finite float64, right
    width). Proved equal, bit for bit, to ``model.predict`` on a probe batch before it is used.
    """
    try:
        from sklearn.linear_model import _base
    except ImportError:  # private module moved: fall back to model.predict
        return None
    # LinearModel.predict, or a subclass's that only delegates to it (MultiOutputLinearModel).
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
        return matrix @ coef + intercept

    probe = np.random.default_rng(0).normal(size=(17, n_features))
    return predict if np.array_equal(predict(probe), model.predict(probe)) else None


class ModelHolder:
    """Holds the current artifact. While none is loaded, readiness checks retry the load, at most once per interval."""

    def __init__(self, model_dir: Path, *, trust_pickle: bool, name_override: str, reload_interval: float) -> None:
        self.model_dir = Path(model_dir)
        self._trust_pickle = trust_pickle
        self._name_override = name_override
        self._reload_interval = reload_interval
        self._lock = threading.Lock()
        self._last_attempt = float("-inf")
        self.artifact: Artifact | None = None
        self._predict: Predictor | None = None
        self.name = ""
        self.error = "model not loaded yet"

    def load(self) -> bool:
        """Try to load the artifact; on failure log one line, count it, and stay not-ready."""
        self._last_attempt = time.monotonic()
        try:
            loaded = artifact.load(self.model_dir, trust_pickle=self._trust_pickle)
        except ArtifactError as exc:
            if self.error != str(exc):
                log.error("model artifact refused: %s", exc, extra={"model_dir": str(self.model_dir)})
            self.error = str(exc)
            metrics.MODEL_LOAD_FAILURES.inc()
            return False
        self.name = self._name_override or loaded.name
        fast = fast_predictor(loaded.model, int(loaded.metadata["n_features"]))
        self._predict = fast or loaded.model.predict
        self.artifact = loaded
        self.error = ""
        metrics.MODEL_INFO.labels(name=self.name, version=loaded.version).set(1)
        log.info(
            "model loaded",
            extra={
                "model": self.name,
                "version": loaded.version,
                "sha256": loaded.metadata["model_sha256"],
                "predict_path": "linear fast path" if fast else "model.predict",
            },
        )
        return True

    def ready(self) -> bool:
        if self.artifact is not None:
            return True
        if time.monotonic() - self._last_attempt >= self._reload_interval and self._lock.acquire(blocking=False):
            try:
                return self.load()
            finally:
                self._lock.release()
        return False

    def require(self, name: str, version: str | None = None) -> Artifact:
        """The artifact serving ``name`` (and ``version``), or the ClientError a request for it deserves."""
        current = self.artifact
        if current is None:
            if not self.ready():
                raise ClientError(503, f"model is not ready: {self.error}")
            current = self.artifact
            assert current is not None
        if name != self.name:
            raise ClientError(404, f"model '{name}' is not served here; available: {self.name}")
        if version is not None and version != current.version:
            raise ClientError(404, f"model '{name}' has no version '{version}'; available: {current.version}")
        return current

    def predict(self, matrix: np.ndarray, protocol: str) -> np.ndarray:
        """Predictions for a validated matrix (float64, finite, the model's width)."""
        assert self._predict is not None
        # Finite inputs can still overflow (1e308 * a coefficient): refuse those rows by number
        # instead of answering null (JSON has no infinity) or logging a RuntimeWarning per request.
        with np.errstate(over="ignore", invalid="ignore"):
            predictions = np.asarray(self._predict(matrix))
        if predictions.dtype.kind == "f" and not np.isfinite(predictions).all():
            bad = np.flatnonzero(~np.isfinite(predictions.reshape(len(matrix), -1)).all(axis=1))
            rows = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
            raise ClientError(422, f"row(s) {rows} give a non-finite prediction: input values too large for this model")
        metrics.rows_predicted(protocol).inc(len(matrix))
        return predictions
