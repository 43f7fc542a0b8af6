"""Input drift: each column's recent distribution against the training distribution, as a PSI per column.

The artifact records, per input column, how the training data (the packager's ``--reference``, else its
sample) fell into bins: quantiles for numbers, the most frequent values for strings and booleans, plus
"other" and "missing" (``reference_of``), as many bins as the reference's size keeps quiet: deciles from
about 220 rows, fewer below (``bins_for``), so that training-like traffic reads under 0.05, not noise.
Each worker keeps the bin of every value of its last MODEL_SERVER_DRIFT_WINDOW rows in a ring, with the
counts per bin, and publishes the counts as a multiprocess gauge (summed over live workers when Prometheus
scrapes). ``/metrics`` then turns the summed counts into ``model_server_feature_drift{column}``, the
population stability index

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

from .. import metrics
from .columns import Batch
from .scheduler import Coalesced
from .signature import BOOL, BYTES, Column, Signature

TOP_CATEGORIES = 20
MAX_BINS = 10  # deciles, when the reference is large enough for them
# A reference's bins are sized so that PSI between it and a window of EXPECTED_WINDOW training-like rows stays
# under QUIET on average: sampling noise alone would otherwise read as drift (10 bins from a 50-row sample
# read ~0.17 on traffic drawn from the training data itself, and one column in seven passed 0.25).
EXPECTED_WINDOW = 1000  # MODEL_SERVER_DRIFT_WINDOW's default
QUIET = 0.05
MAX_COLUMNS = 64  # label cardinality: the first 64 columns of a wide model are watched
DRIFT_MIN_ROWS = 100
FLOOR = 1e-4
PUBLISH_INTERVAL_S = 0.1  # how stale a scrape's counts may be, against a gauge write per bin per request
OTHER, MISSING = "other", "missing"


# ---- the reference, from training data --------------------------------------------------------------


def noise_floor(bins: int, reference_rows: int, window_rows: int = EXPECTED_WINDOW) -> float:
    """PSI's expected value between a reference and a window drawn from the same distribution: two samples'
    PSI is about a chi-square with ``bins - 1`` degrees of freedom, scaled by ``1/R + 1/W``."""
    return (bins - 1) * (1 / max(1, reference_rows) + 1 / max(1, window_rows))


def bins_for(reference_rows: int, window_rows: int = EXPECTED_WINDOW) -> int:
    """The most bins (2 to MAX_BINS) whose noise floor stays under QUIET."""
    most = int(QUIET / (1 / max(1, reference_rows) + 1 / max(1, window_rows))) + 1
    return max(2, min(MAX_BINS, most))


def rows_for_deciles(window_rows: int = EXPECTED_WINDOW) -> int:
    """The fewest reference rows that keep ten bins under QUIET."""
    return math.ceil(1 / (QUIET / (MAX_BINS - 1) - 1 / window_rows))


def reference_of(column: Column, values: np.ndarray, bins: int | None = None) -> dict[str, Any]:
    """How ``values`` (a training column, NaN/None for missing) fall into the column's drift bins, as many
    bins as the number of values keeps quiet (bins_for; ``bins`` overrides), the missing bin among them."""
    total = len(values)
    missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool)
    present = values[~missing]
    budget = (bins or bins_for(total)) - int(missing.any())
    if column.datatype in (BYTES, BOOL):
        keys = [str(v) for v in present]
        counts: dict[str, int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        ranked = sorted(counts, key=lambda k: (-counts[k], k))
        # every category its own bin when they fit; else the most frequent, and "other" for the rest
        top = ranked if len(ranked) <= budget else ranked[: max(1, min(TOP_CATEGORIES, budget - 1))]
        other = len(keys) - sum(counts[k] for k in top)
        return {
            "categories": top,
            "proportions": [counts[k] / total for k in top],
            OTHER: other / total,
            MISSING: int(missing.sum()) / total,
        }
    numbers = present.astype(np.float64)
    quantiles = np.linspace(0, 1, max(2, budget) + 1)[1:-1]
    edges = np.unique(np.quantile(numbers, quantiles)) if numbers.size else np.empty(0)
    per_bin = np.bincount(np.searchsorted(edges, numbers, side="right"), minlength=len(edges) + 1)
    return {
        "edges": edges.tolist(),
        "proportions": (per_bin / total).tolist(),
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
    """This worker's last ``size`` rows, as bin counts per watched column.

    Every watched column's bins live in one flat count vector (column after column), and the ring
    holds each remembered row's flat bin index per column. A request only notes its batch; every
    PUBLISH_INTERVAL_S (a timer, so the last rows of a burst are counted too) the noted rows are
    binned, counted and forgotten in one pass of array operations, and the changed bins written to
    the shared gauge: the per-request cost stays a list append.
    """

    def __init__(self, signature: Signature, size: int) -> None:
        self.size = size
        self.signature = signature
        self.watched = [w for w in (_watched(c) for c in signature.columns[:MAX_COLUMNS]) if w is not None]
        widths = [len(w.reference) for w in self.watched]
        self._offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.intp)
        self.counts = np.zeros(int(sum(widths)), dtype=np.int64)
        self._ring = np.full((size, len(self.watched)), -1, dtype=np.intp)
        self._head = 0
        self.rows = 0
        numeric = [i for i, w in enumerate(self.watched) if w.edges is not None]
        self._numeric = np.asarray(numeric, dtype=np.intp)
        self._numeric_positions = [signature.names.index(self.watched[i].column.name) for i in numeric]
        numeric_edges = [w.edges for w in self.watched if w.edges is not None]
        width = max((len(edges) for edges in numeric_edges), default=0)
        self._edges = np.full((len(numeric), width), np.inf)
        for row, edges in enumerate(numeric_edges):
            self._edges[row, : len(edges)] = edges
        self._missing_bins = np.asarray([len(self.watched[i].reference) - 1 for i in numeric], dtype=np.intp)
        self._categorical = [i for i, w in enumerate(self.watched) if w.edges is None]
        self._published = np.full_like(self.counts, -1)  # the first publish writes every bin
        self._gauges = [metrics.drift_bin(w.column.name, label) for w in self.watched for label in w.labels]
        self._publisher = Coalesced(self.publish, PUBLISH_INTERVAL_S)
        self._pending: list[Batch] = []

    def observe(self, batch: Batch) -> None:
        """Note the batch's rows; they are binned and counted with the others of the same moment."""
        if not self.watched:
            return
        self._pending.append(batch)
        self._publisher.request()

    def _count(self) -> None:
        """Bin every row noted since the last count in one pass; forget the oldest beyond the window."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        takes = [min(b.rows, self.size) for b in pending]
        columns = [np.empty((0, 0))] * len(self.watched)
        if len(self._numeric):
            numbers = np.vstack([self._numeric_values(b, t) for b, t in zip(pending, takes, strict=True)])
        for index in self._categorical:
            name = self.watched[index].column.name
            columns[index] = np.concatenate(
                [
                    np.asarray(b.column(self.signature, name)[-t:], dtype=object)
                    for b, t in zip(pending, takes, strict=True)
                ]
            )
        take = min(sum(takes), self.size)
        bins = np.empty((take, len(self.watched)), dtype=np.intp)
        if len(self._numeric):
            values = numbers[-take:]
            numeric_bins = (values[:, :, None] >= self._edges[None, :, :]).sum(axis=2)
            missing = np.isnan(values)
            if missing.any():
                numeric_bins[missing] = np.broadcast_to(self._missing_bins, values.shape)[missing]
            bins[:, self._numeric] = numeric_bins
        for index in self._categorical:
            bins[:, index] = self.watched[index].bins(columns[index][-take:])
        flat = bins + self._offsets
        positions = (self._head + np.arange(take)) % self.size
        old = self._ring[positions].ravel()
        self.counts += np.bincount(flat.ravel(), minlength=len(self.counts))
        self.counts -= np.bincount(old[old >= 0], minlength=len(self.counts))
        self._ring[positions] = flat
        self._head = int((self._head + take) % self.size)
        self.rows = min(self.rows + take, self.size)

    def _numeric_values(self, batch: Batch, take: int) -> np.ndarray:
        if batch.matrix is not None:
            return batch.matrix[-take:, self._numeric_positions]
        assert batch.columns is not None
        names = [self.signature.names[p] for p in self._numeric_positions]
        return np.column_stack([np.asarray(batch.columns[n][-take:], dtype=np.float64) for n in names])

    def publish_now(self) -> None:
        """Publish what was noted so far without waiting for the timer (a scrape of this worker)."""
        self._publisher.now()

    def publish(self) -> None:
        """Count what was noted, then write the bins whose counts changed to the shared gauge."""
        self._count()
        for index in np.flatnonzero(self.counts != self._published):
            self._gauges[index].set(int(self.counts[index]))
        self._published[:] = self.counts


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
