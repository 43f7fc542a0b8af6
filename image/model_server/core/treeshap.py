"""Exact Shapley values of tree ensembles: path-dependent TreeSHAP, as SHAP's TreeExplainer defines it.

The value of a coalition S of features is the tree's expected output when the features in S are fixed to the
row's values and the others follow the training data down the tree (each split sends them left and right in
proportion to the training cover). Shapley values of that game are exact and consistent, unlike Saabas' path
attributions, and they add up: ``baseline + sum(contributions) == the model's output``.

How it is computed here: the ensemble is flattened once, at load, into its leaves. A leaf's path tests a set
of distinct features; for feature j the path keeps a fraction ``z_j`` of the training cover (the product of
cover ratios over the splits on j) and a row either satisfies all of the path's tests on j (``o_j = 1``) or
not (0). The leaf's value enters coalition S with weight ``prod_{j in S} o_j * prod_{j not in S} z_j``, so
the leaf's share of feature i's Shapley value is

    (o_i - z_i) * value * sum_k w(k) * q_k,   q = coefficients of prod_{j != i} (z_j + o_j * t)

with w(k) = k! (d-1-k)! / d! over the path's d features (Lundberg et al. 2018, Algorithm 2, written as
polynomials). Every leaf of every tree is evaluated at once with numpy: shorter paths are padded with
features that are always satisfied and keep all the cover (``z = o = 1``), null players whose presence
changes no other feature's Shapley value. Cost per row: leaves x d^2 arithmetic, no Python per node.

Families: DecisionTree, RandomForest, ExtraTrees (regressors and classifiers, one output), GradientBoosting
and HistGradientBoosting (regressors with an identity link, binary and multiclass classifiers), with
scikit-learn's missing-value routing and HistGradientBoosting's categorical splits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from math import factorial
from typing import Any

import numpy as np

# Per-request working set: rows are explained in chunks of at most this many (row, leaf, slot) cells.
CHUNK_CELLS = 2_000_000
# Precomputed patterns (see Ensemble.patterns) when leaves x 2**slots x slots stays within this (32 MiB).
PATTERN_CELLS = 4_000_000
# Load-time bound: an ensemble flattened to more (leaf, slot) cells than this is not explained exactly; one
# row would take tens of milliseconds of numpy and every request's working set would grow with it.
MAX_CELLS = 4_000_000


class TooLarge(Exception):
    """The ensemble is larger than an exact explanation here is allowed to cost."""


@dataclass(frozen=True)
class Ensemble:
    """The ensemble as a table of leaves: what a row must satisfy to reach each, and what each adds."""

    values: np.ndarray  # (leaves, outputs): the leaf's addition to each raw output (scale applied)
    constant: np.ndarray  # (outputs,): added to every row (gradient boosting's initial prediction)
    zero: np.ndarray  # (leaves, slots): cover fraction kept by the path for the slot's feature (pad: 1)
    slot_feature: np.ndarray  # (leaves, slots): the feature of each slot (pad: 0, with zero == 1)
    # One row per split on a path: which slot it belongs to (flat index leaf * slots + slot) and the test.
    step_slot: np.ndarray
    step_feature: np.ndarray
    step_threshold: np.ndarray
    step_goes_left: np.ndarray  # the path takes the left child here
    step_missing_left: np.ndarray  # NaN (and, for categories, an unknown value) goes left
    step_category: np.ndarray  # index into category_left, -1 for a numeric split
    category_left: np.ndarray  # (categorical splits, 256) bool: the category code goes left
    float32_input: bool  # scikit-learn's Tree compares float32 inputs; HistGradientBoosting float64

    @cached_property
    def patterns(self) -> np.ndarray | None:
        """(leaves, 2**slots, slots) or None: every leaf's ``(o_i - z_i) * sum_k w(k) q_k`` for every pattern
        of o, when that fits PATTERN_CELLS; a request then looks its rows' patterns up (2-4x faster than the
        polynomials for 10-100 rows). Built on the first explanation, not at load: it takes ~0.8 s for
        12,600 leaves over 6 features, which would lengthen every cold start for a feature few requests use."""
        leaves, slots = self.zero.shape
        if leaves * (2**slots) * slots > PATTERN_CELLS:
            return None
        ones = ((np.arange(2**slots)[:, None] >> np.arange(slots)) & 1).astype(np.float64)  # (2**slots, slots)
        every = np.broadcast_to(ones[:, None, :], (2**slots, leaves, slots))
        sums = _unwound_sums(every, self.zero, _shapley_weights(slots))
        return np.ascontiguousarray(((every - self.zero) * sums).transpose(1, 0, 2))

    @cached_property
    def _slot_starts(self) -> np.ndarray:
        """Where each slot's run of tests starts in the step arrays (sorted by slot)."""
        return np.flatnonzero(np.r_[True, self.step_slot[1:] != self.step_slot[:-1]])

    @property
    def cells(self) -> int:
        return int(self.zero.size)

    def baseline(self) -> np.ndarray:
        """The expected output over the training cover: (outputs,)."""
        expected: np.ndarray = self.constant + np.prod(self.zero, axis=1) @ self.values
        return expected

    def satisfied(self, matrix: np.ndarray) -> np.ndarray:
        """(rows, leaves, slots) bool: the row passes every test of the path on the slot's feature."""
        x = np.asarray(matrix, dtype=np.float32).astype(np.float64) if self.float32_input else matrix
        v = x[:, self.step_feature]  # (rows, steps)
        missing = np.isnan(v)
        left = v <= self.step_threshold
        categorical = self.step_category >= 0
        if categorical.any():
            codes = v[:, categorical]
            known = ~np.isnan(codes) & (codes >= 0) & (codes < 256)
            lookup = self.category_left[self.step_category[categorical]]  # (categorical steps, 256)
            index = np.where(known, codes, 0).astype(np.intp)
            in_left = np.take_along_axis(lookup[None, :, :], index[:, :, None], axis=2)[:, :, 0]
            # known codes go where the split's bitset says (a code in neither set counts as missing)
            left[:, categorical] = np.where(known, in_left, self.step_missing_left[categorical])
            missing[:, categorical] = False
        left = np.where(missing, self.step_missing_left, left)
        passes = left == self.step_goes_left
        rows, (leaves, slots) = len(matrix), self.zero.shape
        out = np.ones((rows, leaves * slots), dtype=bool)
        if passes.shape[1]:
            starts = self._slot_starts
            out[:, self.step_slot[starts]] = np.logical_and.reduceat(passes, starts, axis=1)
        return out.reshape(rows, leaves, slots)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """The raw outputs (rows, outputs), from the same table: every leaf the row reaches."""
        raw: np.ndarray = self.constant + self.satisfied(matrix).all(axis=2) @ self.values
        return raw

    def shapley(self, matrix: np.ndarray, columns: int, output: np.ndarray) -> np.ndarray:
        """(rows, columns): each row's Shapley values for its ``output`` (an index per row)."""
        rows = len(matrix)
        result = np.zeros((rows, columns))
        leaves, slots = self.zero.shape
        step = max(1, CHUNK_CELLS // max(1, self.cells))
        weights = _shapley_weights(slots)
        for start in range(0, rows, step):
            chunk = slice(start, min(rows, start + step))
            satisfied = self.satisfied(matrix[chunk])
            value = self.values[:, output[chunk]].T  # (rows, leaves)
            patterns = self.patterns
            if patterns is not None:
                pattern = satisfied @ (1 << np.arange(slots))  # (rows, leaves)
                phi = patterns[np.arange(leaves), pattern] * value[:, :, None]
            else:
                ones = satisfied.astype(np.float64)
                phi = (ones - self.zero) * _unwound_sums(ones, self.zero, weights) * value[:, :, None]
            n = chunk.stop - chunk.start
            index = (np.arange(n)[:, None, None] * columns + self.slot_feature[None, :, :]).ravel()
            result[chunk] = np.bincount(index, weights=phi.ravel(), minlength=n * columns).reshape(n, columns)
        return result


def _shapley_weights(d: int) -> np.ndarray:
    """w(k) = k! (d-1-k)! / d!: the Shapley weight of a coalition of k of the other d-1 features."""
    return np.array([factorial(k) * factorial(d - 1 - k) / factorial(d) for k in range(d)])


def _unwound_sums(ones: np.ndarray, zero: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For every slot i: sum_k w(k) q_k, q the coefficients of prod_{j != i} (z_j + o_j t)."""
    rows, leaves, slots = ones.shape
    # coefficients of the whole product, lowest power first
    c = np.zeros((rows, leaves, slots + 1))
    c[:, :, 0] = 1.0
    for j in range(slots):
        z, o = zero[None, :, j, None], ones[:, :, j, None]
        shifted = np.zeros_like(c)
        shifted[:, :, 1:] = c[:, :, :-1] * o
        c = c * z + shifted
    sums = np.empty((rows, leaves, slots))
    safe_zero = np.where(zero > 0, zero, 1.0)
    for i in range(slots):
        z = zero[None, :, i]
        # o_i = 1: divide by (z_i + t), from the top power down; o_i = 0: the factor was the constant z_i
        q_next = c[:, :, slots]
        with_one = weights[slots - 1] * q_next
        for k in range(slots - 1, 0, -1):
            q_next = c[:, :, k] - z * q_next
            with_one = with_one + weights[k - 1] * q_next
        with_zero = c[:, :, :slots] @ weights / safe_zero[None, :, i]
        sums[:, :, i] = np.where(ones[:, :, i] > 0, with_one, with_zero)
    return sums


# ---- flattening ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tree:
    """One tree as node arrays (a leaf has ``left == -1``), its leaves' additions already scaled."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    cover: np.ndarray
    values: np.ndarray  # (nodes, outputs)
    category: np.ndarray | None = None  # node -> its row in the tree's category tables, -1 if numeric
    tables: np.ndarray | None = None  # (categorical splits, 256) bool


def _flatten(trees: list[_Tree], outputs: int, constant: np.ndarray, float32_input: bool) -> Ensemble:
    """Every root-to-leaf path of every tree, level by level (numpy per depth, not Python per node)."""
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("leaf", "node_feature", "threshold", "goes_left", "missing_left", "category", "ratio", "values")
    }
    tables: list[np.ndarray] = []
    leaf_count = 0
    for tree in trees:
        inner = np.flatnonzero(tree.left >= 0)
        parent = np.full(len(tree.left), -1, dtype=np.intp)
        parent[tree.left[inner]] = inner
        parent[tree.right[inner]] = inner
        is_left = np.zeros(len(tree.left), dtype=bool)
        is_left[tree.left[inner]] = True
        leaves = np.flatnonzero(tree.left < 0)
        category = tree.category if tree.category is not None else np.full(len(tree.left), -1, dtype=np.intp)
        category = np.where(category >= 0, category + len(tables), -1)
        if tree.tables is not None:
            tables.extend(tree.tables)
        current, ids = leaves, np.arange(len(leaves)) + leaf_count
        while current.size:
            up = parent[current]
            keep = up >= 0
            current, ids, up = current[keep], ids[keep], up[keep]
            parts["leaf"].append(ids)
            parts["node_feature"].append(tree.feature[up])
            parts["threshold"].append(tree.threshold[up])
            parts["goes_left"].append(is_left[current])
            parts["missing_left"].append(tree.missing_left[up].astype(bool))
            parts["category"].append(category[up])
            parts["ratio"].append(np.where(tree.cover[up] > 0, tree.cover[current] / tree.cover[up], 0.0))
            current = up
        parts["values"].append(tree.values[leaves])
        leaf_count += len(leaves)
    leaf = np.concatenate(parts["leaf"]) if parts["leaf"] else np.zeros(0, dtype=np.intp)
    feature = np.concatenate(parts["node_feature"]).astype(np.intp) if parts["leaf"] else leaf
    # a slot per distinct feature on a leaf's path, numbered within the leaf
    width = int(feature.max()) + 1 if feature.size else 1
    distinct, step_to_distinct = np.unique(leaf * width + feature, return_inverse=True)
    leaf_of = distinct // width
    slot_of = np.arange(len(distinct)) - np.searchsorted(leaf_of, leaf_of, side="left")
    slots = int(slot_of.max()) + 1 if slot_of.size else 1
    if leaf_count * slots > MAX_CELLS:
        raise TooLarge(f"{leaf_count} leaves with paths over up to {slots} features ({leaf_count * slots} cells)")
    zero = np.ones((leaf_count, slots))
    np.multiply.at(zero, (leaf_of[step_to_distinct], slot_of[step_to_distinct]), np.concatenate(parts["ratio"]))
    slot_feature = np.zeros((leaf_count, slots), dtype=np.intp)
    slot_feature[leaf_of, slot_of] = distinct % width
    step_slot = leaf_of[step_to_distinct] * slots + slot_of[step_to_distinct]
    order = np.argsort(step_slot, kind="stable")  # a slot's tests side by side: satisfied() reduces runs

    def steps(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate(parts[name]).astype(dtype)[order]

    return Ensemble(
        values=np.concatenate(parts["values"]).reshape(leaf_count, outputs),
        constant=np.asarray(constant, dtype=np.float64).reshape(outputs),
        zero=zero,
        slot_feature=slot_feature,
        step_slot=step_slot[order],
        step_feature=feature[order],
        step_threshold=steps("threshold", np.float64),
        step_goes_left=steps("goes_left", bool),
        step_missing_left=steps("missing_left", bool),
        step_category=steps("category", np.intp),
        category_left=np.array(tables, dtype=bool).reshape(-1, 256),
        float32_input=float32_input,
    )


def _sklearn_tree(tree: Any, values: np.ndarray) -> _Tree:
    missing = getattr(tree, "missing_go_to_left", None)
    return _Tree(
        left=np.asarray(tree.children_left, dtype=np.intp),
        right=np.asarray(tree.children_right, dtype=np.intp),
        feature=np.asarray(tree.feature, dtype=np.intp),
        threshold=np.asarray(tree.threshold, dtype=np.float64),
        missing_left=np.zeros(tree.node_count, dtype=bool) if missing is None else np.asarray(missing, dtype=bool),
        cover=np.asarray(tree.weighted_n_node_samples, dtype=np.float64),
        values=values,
    )


def forest(estimators: list[Any], classifier: bool, outputs: int) -> Ensemble:
    """DecisionTree / RandomForest / ExtraTrees: the mean of the trees' leaf values (class probabilities)."""
    trees = []
    for estimator in estimators:
        values = np.asarray(estimator.tree_.value, dtype=np.float64)[:, 0, :outputs]
        if classifier:  # fractions of the leaf's weighted samples, as predict_proba averages them
            totals = values.sum(axis=1, keepdims=True)
            values = values / np.where(totals > 0, totals, 1.0)
        trees.append(_sklearn_tree(estimator.tree_, values / len(estimators)))
    return _flatten(trees, outputs, np.zeros(outputs), float32_input=True)


def _one_column(values: np.ndarray, column: int, outputs: int) -> np.ndarray:
    out = np.zeros((len(values), outputs))
    out[:, column] = values
    return out


def gradient_boosting(model: Any, constant: np.ndarray) -> Ensemble:
    """GradientBoosting: ``constant + learning_rate * sum of the stage's trees``, one column per raw output."""
    outputs = model.estimators_.shape[1]
    # GradientBoosting predicts with its own loop over the stages (predict_stages), not the trees' apply: a NaN
    # fails every ``x <= threshold`` there and goes right, wherever the tree itself would send it.
    trees = [
        dataclasses.replace(
            _sklearn_tree(
                estimator.tree_,
                _one_column(np.asarray(estimator.tree_.value)[:, 0, 0] * model.learning_rate, k, outputs),
            ),
            missing_left=np.zeros(estimator.tree_.node_count, dtype=bool),
        )
        for stage in model.estimators_
        for k, estimator in enumerate(stage)
    ]
    return _flatten(trees, outputs, constant, float32_input=True)


def hist_gradient_boosting(model: Any) -> Ensemble:
    """HistGradientBoosting: ``baseline + sum of the predictors' leaf values`` (shrinkage already applied)."""
    outputs = len(model._predictors[0])
    known, feature_map = hgb_known_categories(model)
    trees = []
    for iteration in model._predictors:
        for k, predictor in enumerate(iteration):
            nodes = predictor.nodes
            is_leaf = nodes["is_leaf"].astype(bool)
            category, tables = hgb_category_tables(predictor, known, feature_map)
            trees.append(
                _Tree(
                    left=np.where(is_leaf, -1, nodes["left"].astype(np.intp)),
                    right=np.where(is_leaf, -1, nodes["right"].astype(np.intp)),
                    feature=nodes["feature_idx"].astype(np.intp),
                    threshold=nodes["num_threshold"].astype(np.float64),
                    missing_left=nodes["missing_go_to_left"].astype(bool),
                    cover=nodes["count"].astype(np.float64),
                    values=_one_column(nodes["value"].astype(np.float64), k, outputs),
                    category=category,
                    tables=tables,
                )
            )
    return _flatten(trees, outputs, np.asarray(model._baseline_prediction).reshape(outputs), float32_input=False)


def hgb_known_categories(model: Any) -> tuple[Any, Any]:
    """HistGradientBoosting's known-category bitsets and their feature map; (None, None) without categories."""
    if model.is_categorical_ is not None and np.any(model.is_categorical_):
        return model._bin_mapper.make_known_categories_bitsets()  # type: ignore[no-any-return]
    return None, None


def hgb_category_tables(predictor: Any, known: Any, feature_map: Any) -> tuple[np.ndarray, np.ndarray]:
    """For one HistGradientBoosting predictor: each node's row in its category tables (-1 for a numeric
    split or a leaf), and the tables (categorical splits, 256): does code c go left? ``known`` and
    ``feature_map`` are hgb_known_categories' answer."""
    nodes = predictor.nodes
    split = np.flatnonzero(nodes["is_categorical"].astype(bool) & ~nodes["is_leaf"].astype(bool))
    category = np.full(len(nodes), -1, dtype=np.intp)
    category[split] = np.arange(len(split))
    if not split.size:
        return category, np.zeros((0, 256), dtype=bool)
    tables = [
        category_table(
            predictor.raw_left_cat_bitsets[nodes["bitset_idx"][node]],
            known[feature_map[nodes["feature_idx"][node]]],
            bool(nodes["missing_go_to_left"][node]),
        )
        for node in split
    ]
    return category, np.array(tables, dtype=bool).reshape(-1, 256)


def category_table(left_bitset: np.ndarray, known_bitset: np.ndarray, missing_left: bool) -> np.ndarray:
    """For codes 0..255: does the split send it left? (Unknown codes follow the missing values.)"""
    codes = np.arange(256)
    words, bits = codes // 32, codes % 32
    in_left = (np.asarray(left_bitset, dtype=np.uint64)[words] >> bits.astype(np.uint64)) & 1
    is_known = (np.asarray(known_bitset, dtype=np.uint64)[words] >> bits.astype(np.uint64)) & 1
    return np.where(in_left == 1, True, np.where(is_known == 1, False, missing_left))
