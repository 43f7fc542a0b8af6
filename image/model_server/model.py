"""The served model: loaded once per worker, retried while it is bad, swapped in atomically when it turns good."""

from __future__ import annotations

import logging
import threading
import time
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
        self.artifact = loaded
        self.error = ""
        metrics.MODEL_INFO.labels(name=self.name, version=loaded.version).set(1)
        log.info(
            "model loaded",
            extra={"model": self.name, "version": loaded.version, "sha256": loaded.metadata["model_sha256"]},
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

    @staticmethod
    def predict(current: Artifact, matrix: np.ndarray, protocol: str) -> np.ndarray:
        predictions = np.asarray(current.model.predict(matrix))
        metrics.ROWS_PREDICTED.labels(protocol=protocol).inc(len(matrix))
        return predictions
