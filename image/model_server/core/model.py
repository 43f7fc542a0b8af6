"""The served model: loaded once per process, retried while it is bad, swapped in atomically when it turns good."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics
from ..config import Settings
from ..errors import ArtifactError, NotFound, NotReady
from . import artifact, drift, outcomes, proof
from .artifact import Artifact, Expectations
from .columns import Batch
from .runner import ModelRunner
from .scheduler import DEFAULT_BATCH_ROWS, Scheduler, batching_pays

log = logging.getLogger("model_server.core.model")


@dataclass(frozen=True)
class Served:
    """One loaded artifact with its runner and the outputs answered when a request names none."""

    artifact: Artifact
    runner: ModelRunner
    default_outputs: tuple[str, ...]
    window: drift.Window | None = None  # this worker's recent rows, for the drift scores
    scheduler: Scheduler | None = None  # this worker's prediction queue
    batching: str = ""  # whether concurrent requests are merged into one model call, and why
    recent: outcomes.Recorder | None = None  # this process's recent outcomes, for a canary analysis

    @property
    def version(self) -> str:
        return self.artifact.version

    def predict(self, batch: Batch, outputs: tuple[str, ...], protocol: str) -> dict[str, np.ndarray]:
        """The outputs for ``batch``, computed in this worker's turn (scheduler.py); counted for drift."""
        if self.scheduler is not None:
            results = self.scheduler.run(self.runner, batch, outputs)
        else:
            results = self.runner.run(batch, outputs)
        metrics.rows_predicted(protocol).inc(batch.rows)
        if self.window is not None:
            self.window.observe(batch)
        if self.recent is not None:
            values = outcomes.predicted_values(results, self.runner.description.classes)
            if values is not None:
                self.recent.predictions(values)
        return results


def configure_scikit_learn() -> None:
    """Process-wide scikit-learn settings for serving, applied by the server (not at import).

    Requests are checked (numbers finite, nulls only where the signature allows them, which the
    packager proved the model handles) before the model sees them, so scikit-learn's own second
    pass over the data is skipped: the largest single saving on small requests.
    """
    import sklearn

    sklearn.set_config(assume_finite=True)


class ModelHolder:
    """Holds the current model. While none is loaded, readiness checks retry the load, at most once per interval."""

    def __init__(self, settings: Settings) -> None:
        self.model_dir = Path(settings.model_dir)
        self._settings = settings
        self._lock = threading.Lock()
        self._last_attempt = float("-inf")
        self.served: Served | None = None
        self.name = ""
        self.error = "model not loaded yet"
        self.outcomes = outcomes.Recorder(settings.metrics_dir)

    def load(self) -> bool:
        """Try to load the artifact; on failure log one line, count it, and stay not-ready."""
        self._last_attempt = time.monotonic()
        settings = self._settings
        try:
            loaded = artifact.load(
                self.model_dir,
                trust_pickle=settings.trust_pickle,
                trusted_types=settings.trusted_types,
                expect=Expectations(settings.expected_version, settings.expected_sha256),
            )
            runner = ModelRunner(
                loaded.model,
                loaded.signature,
                loaded.metadata.get("explanation", {}).get("reference"),
                compiled_paths=settings.compiled,
                proved=proof.recorded(loaded.metadata),
            )
            missing = [name for name in settings.default_outputs if name not in runner.outputs]
            if missing:
                raise ArtifactError(
                    f"MODEL_SERVER_DEFAULT_OUTPUTS names {', '.join(missing)}, which this "
                    f"{runner.description.estimator} does not answer (it has {', '.join(runner.outputs)})"
                )
        except ArtifactError as exc:
            if self.error != str(exc):
                log.error("model artifact refused: %s", exc, extra={"model_dir": str(self.model_dir)})
            self.error = str(exc)
            metrics.MODEL_LOAD_FAILURES.inc()
            metrics.MODEL_READY.set(0)
            return False
        self.name = settings.model_name or loaded.name
        window = drift.Window(loaded.signature, settings.drift_window) if settings.drift_window else None
        batch_rows, batching = self._batch_rows(runner)
        scheduler = Scheduler(settings.max_queue, batch_rows, settings.max_batch_delay_ms / 1000)
        self.served = Served(loaded, runner, settings.default_outputs, window, scheduler, batching, self.outcomes)
        self.error = ""
        metrics.MODEL_INFO.labels(name=self.name, version=loaded.version).set(1)
        metrics.MODEL_READY.set(1)
        log.info(
            "model loaded",
            extra={
                "model": self.name,
                "version": loaded.version,
                "sha256": loaded.metadata["model_sha256"],
                "estimator": runner.description.estimator,
                "task": runner.description.task,
                "outputs": list(runner.outputs),
                "predict_path": runner.description.path,
                "batching": batching,
            },
        )
        return True

    def _batch_rows(self, runner: ModelRunner) -> tuple[int, str]:
        """The most rows one model call may merge, and why (MODEL_SERVER_MAX_BATCH_SIZE, or measured)."""
        configured = self._settings.max_batch_size
        if configured is not None:
            return configured, f"{configured} rows (MODEL_SERVER_MAX_BATCH_SIZE)"
        pays, why = batching_pays(runner)
        return (DEFAULT_BATCH_ROWS if pays else 1), why

    def ready(self) -> bool:
        if self.served is not None:
            return True
        if time.monotonic() - self._last_attempt >= self._settings.reload_interval and self._lock.acquire(
            blocking=False
        ):
            try:
                return self.load()
            finally:
                self._lock.release()
        return False

    def require(self, name: str, version: str | None = None) -> Served:
        """The model serving ``name`` (and ``version``), or the ClientError a request for it deserves."""
        current = self.served
        if current is None:
            if not self.ready():
                raise NotReady(f"model is not ready: {self.error}")
            current = self.served
            assert current is not None
        if name != self.name:
            raise NotFound(f"model '{name}' is not served here; available: {self.name}")
        if version is not None and version != current.version:
            raise NotFound(f"model '{name}' has no version '{version}'; available: {current.version}")
        return current
