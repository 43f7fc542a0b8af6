"""Recent outcomes: what a canary analysis reads to judge a new model version against the stable one.

Each worker remembers its last RING predictions requests (when, how long, whether the server failed it) and
its last RING predicted values (a regressor's number, a classifier's class index), with a timestamp each.
The rings live in a small file per worker in the metrics directory, mapped into memory (about 200 KiB), so
any worker answering ``GET /v2/models/<name>/judgement`` reads its siblings' rings too: a pod's answer
covers every worker, with no lock and no message between processes. A request only appends to a list; the
rings are written in one pass of array operations at most every FLUSH_INTERVAL_S (as drift.py does), so a
prediction's cost does not grow.

``summary`` turns the rows of the last ``window`` seconds into the figures the judge compares
(``model_server.judge``): request count, error ratio (5xx: the server's or the model's failures, never a
client's 4xx), latency quantiles, and the prediction distribution: percentiles for regressors, class counts
for classifiers. Memory is bounded by RING whatever the traffic; a busy pod's window is its last RING
requests, and the summary says how many seconds they span.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from .scheduler import Coalesced

RING = 4096
FLUSH_INTERVAL_S = 0.1
DEFAULT_WINDOW_S = 300.0  # the recent traffic a judgement covers unless asked otherwise
FILE_PREFIX = "outcomes-"
QUANTILES = (0.5, 0.9, 0.99)
PERCENTILES = np.linspace(0, 100, 101)
# The routes whose outcomes are judged: predictions on every protocol (explanations and metadata are not).
PREDICTION_SUFFIXES = ("/infer", ":predict", "/ModelInfer")
PREDICTION_ROUTES = frozenset({"/predict"})

_HEADS = np.dtype([("requests", "<i8"), ("predictions", "<i8")])
_REQUEST = np.dtype([("at", "<f8"), ("seconds", "<f8"), ("failed", "<f8")])
_PREDICTION = np.dtype([("at", "<f8"), ("value", "<f8")])


def is_prediction(route: str) -> bool:
    return route in PREDICTION_ROUTES or route.endswith(PREDICTION_SUFFIXES)


class _Rings:
    """One process's two rings and their write positions, in a mapped file or (no directory) in memory."""

    SIZE = _HEADS.itemsize + RING * (_REQUEST.itemsize + _PREDICTION.itemsize)

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.heads = np.ndarray((1,), _HEADS, buffer, 0)
        self.requests = np.ndarray((RING,), _REQUEST, buffer, _HEADS.itemsize)
        self.predictions = np.ndarray((RING,), _PREDICTION, buffer, _HEADS.itemsize + RING * _REQUEST.itemsize)

    @classmethod
    def in_memory(cls) -> _Rings:
        return cls(bytearray(cls.SIZE))

    @classmethod
    def mapped(cls, path: Path, writable: bool) -> _Rings:
        if writable:
            with open(path, "wb") as file:
                file.truncate(cls.SIZE)
        return cls(np.memmap(path, dtype=np.uint8, mode="r+" if writable else "r", shape=(cls.SIZE,)))

    def append(self, ring: np.ndarray, field: str, rows: np.ndarray) -> None:
        rows = rows[-RING:]
        head = int(self.heads[0][field])
        ring[(head + np.arange(len(rows))) % RING] = rows
        self.heads[0][field] = head + len(rows)


class Recorder:
    """This process's recent outcomes. Created in the master (preload) and used by workers: each process maps
    its own file on its first write, named by its pid, so a forked worker never writes its parent's rings."""

    def __init__(self, directory: str = "") -> None:
        self.directory = Path(directory) if directory else None
        self._pid = -1
        self._rings: _Rings | None = None
        self._requests: list[tuple[float, float, float]] = []
        self._predictions: list[tuple[float, np.ndarray]] = []
        self._flusher = Coalesced(self.flush, FLUSH_INTERVAL_S)

    def request(self, seconds: float, status: int) -> None:
        self._requests.append((time.monotonic(), seconds, float(status >= 500)))
        self._flusher.request()

    def predictions(self, values: np.ndarray) -> None:
        self._predictions.append((time.monotonic(), values))
        self._flusher.request()

    def flush(self) -> None:
        """Write what was noted since the last flush into this process's rings."""
        rings = self._own_rings()
        requests, self._requests = self._requests, []
        if requests:
            rings.append(rings.requests, "requests", np.array(requests, dtype=np.float64).view(_REQUEST).ravel())
        predictions, self._predictions = self._predictions, []
        if predictions:
            values = np.concatenate([v for _, v in predictions])
            stamps = np.concatenate([np.full(len(v), at) for at, v in predictions])
            rows = np.empty(len(values), _PREDICTION)
            rows["at"], rows["value"] = stamps, values
            rings.append(rings.predictions, "predictions", rows)

    def _own_rings(self) -> _Rings:
        pid = os.getpid()
        if self._rings is None or pid != self._pid:
            self._pid = pid
            if self.directory is None:
                self._rings = _Rings.in_memory()
            else:
                self._rings = _Rings.mapped(self.directory / f"{FILE_PREFIX}{pid}.bin", writable=True)
        return self._rings

    def _all_rings(self) -> list[_Rings]:
        """This process's rings and every live sibling's (a worker that died leaves its file behind until
        gunicorn's child_exit hook removes it; its pid no longer answers, so it is skipped meanwhile)."""
        self._flusher.now()
        own = self._own_rings()
        if self.directory is None:
            return [own]
        rings = [own]
        for path in sorted(self.directory.glob(f"{FILE_PREFIX}*.bin")):
            pid = int(path.stem[len(FILE_PREFIX) :]) if path.stem[len(FILE_PREFIX) :].isdigit() else -1
            if pid == self._pid or not _alive(pid):
                continue
            with contextlib.suppress(OSError, ValueError):  # a sibling's file may be half-created or just removed
                rings.append(_Rings.mapped(path, writable=False))
        return rings

    def summary(self, window: float, classes: tuple[Any, ...] | None) -> dict[str, Any]:
        """The figures of the last ``window`` seconds across this pod's workers (see the module's text)."""
        now = time.monotonic()
        rings = self._all_rings()
        requests = np.concatenate([r.requests[r.requests["at"] > 0].copy() for r in rings])
        predictions = np.concatenate([r.predictions[r.predictions["at"] > 0].copy() for r in rings])
        requests = requests[requests["at"] >= now - window]
        predictions = predictions[predictions["at"] >= now - window]
        count = len(requests)
        failed = int(requests["failed"].sum())
        oldest = float(min(requests["at"].min(initial=now), predictions["at"].min(initial=now)))
        return {
            "host": socket.gethostname(),
            "workers": len(rings),
            "window_seconds": window,
            "seconds_covered": round(now - oldest, 3),
            "requests": count,
            "errors": failed,
            "error_ratio": failed / count if count else 0.0,
            "latency_seconds": {
                f"p{round(q * 100)}": float(np.quantile(requests["seconds"], q)) if count else None for q in QUANTILES
            },
            # for the judge to merge pods: each pod's latency CDF, weighted by its requests
            "latency_percentiles": np.percentile(requests["seconds"], PERCENTILES).tolist() if count else [],
            "predictions": prediction_summary(predictions["value"], classes),
        }


def prediction_summary(values: np.ndarray, classes: tuple[Any, ...] | None) -> dict[str, Any]:
    """Class counts for a classifier (by label, so two versions compare by name), else percentiles 0-100."""
    if classes is not None:
        known = values[(values >= 0) & (values < len(classes))].astype(np.intp)  # -1: a label not among classes
        counts = np.bincount(known, minlength=len(classes))
        return {
            "kind": "classes",
            "rows": len(known),
            "counts": {str(label): int(n) for label, n in zip(classes, counts, strict=False)},
        }
    return {
        "kind": "percentiles",
        "rows": len(values),
        "percentiles": np.percentile(values, PERCENTILES).tolist() if len(values) else [],
    }


def predicted_values(results: dict[str, np.ndarray], classes: tuple[Any, ...] | None) -> np.ndarray | None:
    """What a request's answer predicted, one number per row: the class index for a classifier (from its
    labels, or the most likely class when only scores were asked), the value for a single-output regressor;
    None when the answer holds neither."""
    if classes is not None:
        labels = results.get("predict")
        if labels is not None and labels.ndim == 1:
            index = {label: i for i, label in enumerate(classes)}
            distinct, inverse = np.unique(labels, return_inverse=True)  # a few labels, however many rows
            return np.array([index.get(_label(v), -1) for v in distinct], dtype=np.float64)[inverse]
        for name in ("predict_proba", "decision_function"):
            scores = results.get(name)
            if scores is not None and scores.ndim == 2 and scores.shape[1] == len(classes):
                return np.asarray(scores.argmax(axis=1), dtype=np.float64)
            if scores is not None and scores.ndim == 1 and len(classes) == 2:
                return (scores > (0.5 if name == "predict_proba" else 0.0)).astype(np.float64)
        return None
    values = results.get("predict")
    if values is None or values.ndim != 1 or values.dtype.kind not in "fiub":
        return None
    return values.astype(np.float64)


def _label(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _alive(pid: int) -> bool:
    """A sibling worker still running: its /proc entry exists and is not a zombie (a worker that died and
    that gunicorn has not reaped yet). The server runs on Linux (the image); elsewhere no sibling is read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def forget(pid: int, directory: str) -> None:
    """Remove a dead worker's rings (gunicorn's child_exit hook)."""
    if directory:
        with contextlib.suppress(OSError):
            (Path(directory) / f"{FILE_PREFIX}{pid}.bin").unlink()
