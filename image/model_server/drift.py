"""Input drift: each column's recent distribution against the training distribution, as a PSI per column.

The artifact records, per input column, how the training data (or the packager's sample) fell into
bins: deciles for numbers, the most frequent values for strings and booleans, plus "other" and
"missing" (``reference_of``). Each worker keeps the bin of every value of its last
MODEL_SERVER_DRIFT_WINDOW rows in a ring, with the counts per bin, and publishes the counts as a
multiprocess gauge (summed over live workers when Prometheus scrapes). ``/metrics`` then turns the
summed counts into ``model_server_feature_drift{column}``, the population stability index

    PSI = sum over bins of (p - q) * ln(p / q)

with p the recent and q the training share of each bin (both floored at 1e-4). Training-like
traffic stays well under 0.1; 0.25 and more is a large shift. Nothing is exported until the
window holds DRIFT_MIN_ROWS rows, so a quiet model does not raise alarms on a handful of requests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics
from .columns import Batch
from .signature import BOOL, BYTES, Column, Signature

DECILES = np.linspace(0.1, 0.9, 9)
TOP_CATEGORIES = 20
MAX_COLUMNS = 64  # label cardinality: the first 64 columns of a wide model are watched
DRIFT_MIN_ROWS = 100
FLOOR = 1e-4
OTHER, MISSING = "other", "missing"


# ---- the reference, from training data --------------------------------------------------------------


def reference_of(column: Column, values: np.ndarray) -> dict[str, Any]:
    """How ``values`` (a training column, NaN/None for missing) fall into the column's drift bins."""
    total = len(values)
    missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool)
    present = values[~missing]
    if column.datatype in (BYTES, BOOL):
        keys = [str(v) for v in present]
        counts: dict[str, int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        top = sorted(counts, key=lambda k: (-counts[k], k))[:TOP_CATEGORIES]
        other = len(keys) - sum(counts[k] for k in top)
        return {
            "categories": top,
            "proportions": [counts[k] / total for k in top],
            OTHER: other / total,
            MISSING: int(missing.sum()) / total,
        }
    numbers = present.astype(np.float64)
    edges = np.unique(np.quantile(numbers, DECILES)) if numbers.size else np.empty(0)
    bins = np.bincount(np.searchsorted(edges, numbers, side="right"), minlength=len(edges) + 1)
    return {
        "edges": edges.tolist(),
        "proportions": (bins / total).tolist(),
        MISSING: int(missing.sum()) / total,
    }


# ---- per worker: the recent window ------------------------------------------------------------------


@dataclass
class _Watched:
    column: Column
    reference: np.ndarray  # training share per bin: the bins, then other (strings), then missing
    labels: list[str]
    edges: np.ndarray | None
    lookup: dict[str, int] | None

    def bins(self, values: np.ndarray) -> np.ndarray:
        missing_bin = len(self.reference) - 1
        if self.edges is not None:
            numbers = np.asarray(values, dtype=np.float64)
            out = np.searchsorted(self.edges, numbers, side="right")
            out[np.isnan(numbers)] = missing_bin
            return out
        assert self.lookup is not None
        other = missing_bin - 1
        return np.array(
            [
                missing_bin
                if v is None or (isinstance(v, float) and math.isnan(v))
                else self.lookup.get(str(v.item() if isinstance(v, np.generic) else v), other)
                for v in values
            ],
            dtype=np.intp,
        )


def _watched(column: Column) -> _Watched | None:
    distribution = column.distribution
    if not distribution:
        return None
    proportions = list(distribution["proportions"])
    if "edges" in distribution:
        labels = _interval_labels(distribution["edges"])
        return _Watched(
            column,
            np.asarray([*proportions, distribution[MISSING]]),
            [*labels, MISSING],
            np.asarray(distribution["edges"], dtype=np.float64),
            None,
        )
    categories = [str(c) for c in distribution["categories"]]
    return _Watched(
        column,
        np.asarray([*proportions, distribution[OTHER], distribution[MISSING]]),
        [*categories, OTHER, MISSING],
        None,
        {c: i for i, c in enumerate(categories)},
    )


def _interval_labels(edges: list[float]) -> list[str]:
    """``"0: [-inf, 12.5)"``: the index keeps labels distinct however the bounds round."""
    bounds = ["-inf", *(f"{e:.6g}" for e in edges), "+inf"]
    return [f"{index}: [{low}, {high})" for index, (low, high) in enumerate(itertools.pairwise(bounds))]


class Window:
    """This worker's last ``size`` rows, as bin counts per watched column."""

    def __init__(self, signature: Signature, size: int) -> None:
        self.size = size
        self.watched = [w for w in (_watched(c) for c in signature.columns[:MAX_COLUMNS]) if w is not None]
        self.signature = signature
        self._ring = np.full((len(self.watched), size), -1, dtype=np.intp)
        self.counts = [np.zeros(len(w.reference), dtype=np.int64) for w in self.watched]
        self._published = [np.full_like(c, -1) for c in self.counts]  # the first publish writes every bin
        self._gauges = [[metrics.drift_bin(w.column.name, label) for label in w.labels] for w in self.watched]
        self._head = 0
        self.rows = 0

    def observe(self, batch: Batch) -> None:
        """Count the batch's rows; the oldest rows beyond the window size are forgotten."""
        take = min(batch.rows, self.size)
        positions = (self._head + np.arange(take)) % self.size
        for index, watched in enumerate(self.watched):
            values = batch.column(self.signature, watched.column.name)[-take:]
            new = watched.bins(values)
            ring = self._ring[index]
            old = ring[positions]
            counts = self.counts[index]
            np.subtract.at(counts, old[old >= 0], 1)
            np.add.at(counts, new, 1)
            ring[positions] = new
        self._head = int((self._head + take) % self.size)
        self.rows = min(self.rows + take, self.size)
        self._publish()

    def _publish(self) -> None:
        """Write the bins whose counts changed (a 1-row request changes at most two per column)."""
        for counts, published, gauges in zip(self.counts, self._published, self._gauges, strict=True):
            for index in np.flatnonzero(counts != published):
                gauges[index].set(int(counts[index]))
            published[:] = counts


# ---- at scrape time: PSI from the counts summed over workers ----------------------------------------


def psi(counts: np.ndarray, reference: np.ndarray) -> float:
    recent = np.maximum(counts / counts.sum(), FLOOR)
    expected = np.maximum(reference, FLOOR)
    return float(np.sum((recent - expected) * np.log(recent / expected)))


def scores(signature: Signature, counts: dict[tuple[str, str], float]) -> Iterable[tuple[str, float, int]]:
    """(column, PSI, rows) for every watched column whose summed window holds enough rows."""
    for column in signature.columns[:MAX_COLUMNS]:
        watched = _watched(column)
        if watched is None:
            continue
        vector = np.asarray([counts.get((column.name, label), 0.0) for label in watched.labels])
        rows = int(vector.sum())
        if rows >= DRIFT_MIN_ROWS:
            yield column.name, psi(vector, watched.reference), rows
