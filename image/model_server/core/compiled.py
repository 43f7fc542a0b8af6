"""Faster ways to compute exactly what a fitted estimator computes, for the shapes teams serve most.

scikit-learn spends most of a small prediction validating and converting its input, not predicting:
a Pipeline(ColumnTransformer(imputers, one-hot encoder, scaler), LogisticRegression) takes ~4 ms
for one row on a DataFrame, a 100-tree random forest ~5 ms (one joblib task and one input check per
tree). This module rebuilds two things from the fitted parameters:

* **preprocessing**: the transformers before a Pipeline's final step (ColumnTransformer,
  SimpleImputer, OneHotEncoder, OrdinalEncoder, StandardScaler, RobustScaler, MinMaxScaler, a
  FunctionTransformer of a numpy ufunc, PolynomialFeatures, passthrough, nested Pipelines), applied
  to the request's checked columns directly, with the same arithmetic in the same order; no
  DataFrame is built. The final estimator's own methods then run on the result.
* **forests**: RandomForest / ExtraTrees classifiers and regressors (one output): every tree's
  leaves from the tree's own Cython ``apply``, the leaf values summed in tree order as scikit-learn
  does, divided by the tree count. The same floating-point operations in the same order.
* **histogram gradient boosting** (regressors, binary and multiclass classifiers, with their NaN routing,
  categorical splits and own category encoding, of codes or, fitted bare on a DataFrame, of its category
  dtypes of strings): every predictor's leaf found for all trees at once, the leaf values added to the
  baseline in iteration order, then scikit-learn's own link and classes.
* **logistic regression**: ``X @ coef_.T + intercept_`` then scikit-learn's own expit / softmax.

Anything else, or any option these do not cover (pandas output, an encoder's integer dtype, a function
other than a numpy ufunc, ...), is left to scikit-learn. A compiled plan is used only after it has
answered a probe set built from the signature (every category, unseen categories, nulls where
nullable, spread numbers) the same as scikit-learn: labels identical, numbers equal to 1e-9 relative
(in practice bit for bit), and the same requests refused. Otherwise the server logs why and keeps scikit-learn's path.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Unprocessable
from .columns import Batch
from .signature import BOOL, BYTES, FP64, INT64, Signature

log = logging.getLogger("model_server.core.compiled")

Block = np.ndarray  # 2-D: float64, or object where strings travel
Step = Callable[[Block], Block]
Method = Callable[[Any], Any]


# The origin of an output column computed from several input columns (PolynomialFeatures' interaction terms):
# no one column a client sent to sum its contribution back to.
MIXED = -1


@dataclass(frozen=True)
class Stage:
    """A compiled transformer, and for each column it outputs, the input column it comes from
    (explanations sum encoded columns back to the column a client sent), or MIXED."""

    step: Step
    origins: np.ndarray


def _one_to_one(step: Step, names: list[str]) -> Stage:
    return Stage(step, np.arange(len(names)))


def _traced(origins: np.ndarray, through: np.ndarray) -> np.ndarray:
    """``origins`` (of a stage's input columns) carried through a stage whose output columns come from ``through``."""
    return np.where(through == MIXED, MIXED, origins[np.maximum(through, 0)])


@dataclass(frozen=True)
class Plan:
    """How to answer from a batch: the final estimator's input, then its methods."""

    encode: Callable[[Batch], Any]
    methods: dict[str, Method]
    path: str
    # The final estimator and, per column of its input, the signature column it comes from.
    final: Any = None
    origins: np.ndarray | None = None


class NotCompilable(Exception):
    """An estimator or an option this module does not rebuild: scikit-learn's own path serves it."""


# ---- transformers ------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_float(block: Block) -> Block:
    return block if block.dtype == np.float64 else block.astype(np.float64)


def _simple_imputer(imputer: Any, names: list[str]) -> Stage:
    if not (isinstance(imputer.missing_values, float) and math.isnan(imputer.missing_values)):
        raise NotCompilable("SimpleImputer with a missing_values other than NaN")
    statistics = np.asarray(imputer.statistics_)
    if statistics.dtype.kind == "f" and np.isnan(statistics).any():
        raise NotCompilable("SimpleImputer with a feature that was empty when fitted")
    if statistics.dtype.kind == "O" and any(_is_missing(s) for s in statistics):
        raise NotCompilable("SimpleImputer with a feature that was empty when fitted")
    numeric = statistics.dtype.kind in "fiub"
    numeric_statistics = statistics.astype(np.float64) if numeric else statistics

    def impute(block: Block) -> Block:
        if block.dtype != object:
            out = _as_float(block).copy()
            mask = np.isnan(out)
            if mask.any():
                out[mask] = np.broadcast_to(numeric_statistics, out.shape)[mask]
            return out
        out = block.copy()
        for j in range(out.shape[1]):
            column = out[:, j]
            for i, value in enumerate(column):
                if _is_missing(value):
                    column[i] = statistics[j]
        return _as_float(out) if numeric else out

    if not imputer.add_indicator:
        return _one_to_one(impute, names)
    # add_indicator: after the imputed columns, one flag per column that had missing values when fitted (or
    # every column, features="all"), taken from the input before imputing, as its MissingIndicator does.
    indicator = imputer.indicator_
    if indicator.sparse is True:
        raise NotCompilable("SimpleImputer whose missing-value indicator is sparse")
    flagged = np.asarray(indicator.features_, dtype=np.intp)

    def impute_and_flag(block: Block) -> Block:
        if block.dtype != object:
            missing = np.isnan(_as_float(block))
        else:
            missing = np.array([[_is_missing(value) for value in row] for row in block], dtype=bool)
            missing = missing.reshape(block.shape)
        return np.hstack((impute(block), missing[:, flagged]))

    return Stage(impute_and_flag, np.concatenate([np.arange(len(names)), flagged]))


def _lookup(categories: np.ndarray) -> tuple[dict[Any, int], int | None]:
    """Category -> index, and the index of NaN when NaN was a category at fit time."""
    table: dict[Any, int] = {}
    nan_index = None
    for index, category in enumerate(categories):
        if _is_missing(category):
            nan_index = index
        else:
            table[category.item() if isinstance(category, np.generic) else category] = index
    return table, nan_index


def _codes(column: np.ndarray, table: dict[Any, int], nan_index: int | None) -> np.ndarray:
    """Each value's category index, -1 where it is not a category."""
    codes = np.empty(len(column), dtype=np.intp)
    for i, value in enumerate(column):
        if _is_missing(value):
            codes[i] = -1 if nan_index is None else nan_index
        else:
            codes[i] = table.get(value.item() if isinstance(value, np.generic) else value, -1)
    return codes


def _check_encoder(encoder: Any) -> None:
    if np.dtype(encoder.dtype) != np.float64:
        raise NotCompilable(f"{type(encoder).__name__} with dtype {encoder.dtype}")


def _unknown(encoder: Any, column: int, codes: np.ndarray, values: np.ndarray, names: list[str]) -> Unprocessable:
    seen = [str(c) for c in encoder.categories_[column]]
    unseen = sorted({str(v) for v, c in zip(values, codes, strict=True) if c < 0})
    return Unprocessable(
        f"column '{names[column]}' has value(s) {', '.join(map(repr, unseen[:5]))} the model was not trained on "
        f"(known: {', '.join(seen)})"
    )


@dataclass(frozen=True)
class _Grouping:
    """One encoder feature's infrequent categories (min_frequency, max_categories), as scikit-learn groups them:
    the raw index an unknown value takes when it joins them, and each raw index's code after grouping."""

    first_infrequent: int | None
    mapping: np.ndarray | None


def _groupings(encoder: Any) -> list[_Grouping]:
    features = len(encoder.categories_)
    if not getattr(encoder, "_infrequent_enabled", False):
        return [_Grouping(None, None)] * features
    indices = encoder._infrequent_indices
    mappings = encoder._default_to_infrequent_mappings
    return [
        _Grouping(None if index is None else int(index[0]), None if mapping is None else np.asarray(mapping))
        for index, mapping in zip(indices, mappings, strict=True)
    ]


def _encoded(
    codes: np.ndarray, grouping: _Grouping, unknown_joins: bool, keep_raw: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's encoders' integer codes for one feature and which rows are known, in their order: an unknown
    value takes index 0 (or the first infrequent one), the infrequent categories are grouped (all but the raw
    index ``keep_raw``: OrdinalEncoder's missing-value category), and with ``unknown_joins`` an unknown value
    counts as the infrequent group's."""
    known = codes >= 0
    x = np.where(known, codes, 0)
    if grouping.first_infrequent is not None:
        x[~known] = grouping.first_infrequent
        if unknown_joins:
            known = np.ones_like(known)
    if grouping.mapping is not None:
        regroup = slice(None) if keep_raw is None else x != keep_raw
        x[regroup] = grouping.mapping[x[regroup]]
    return x, known


def _one_hot_encoder(encoder: Any, names: list[str]) -> Stage:
    _check_encoder(encoder)
    handle_unknown = "infrequent_if_exist" if encoder.handle_unknown == "warn" else encoder.handle_unknown
    if handle_unknown not in ("error", "ignore", "infrequent_if_exist"):
        raise NotCompilable(f"OneHotEncoder handle_unknown={encoder.handle_unknown!r}")
    lookups = [_lookup(np.asarray(c)) for c in encoder.categories_]
    groupings = _groupings(encoder)
    # The dropped category's code after grouping; None keeps them all (drop="if_binary" on a wider feature too).
    after = getattr(encoder, "_drop_idx_after_grouping", None)
    drops: list[int | None] = (
        [None if d is None else int(d) for d in after] if after is not None else [None] * len(lookups)
    )
    widths = [int(w) for w in encoder._n_features_outs]
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.intp)
    total = int(sum(widths))
    strict = handle_unknown == "error"
    unknown_joins = handle_unknown == "infrequent_if_exist"

    def encode(block: Block) -> Block:
        rows = block.shape[0]
        out = np.zeros((rows, total), dtype=np.float64)
        for j, (table, nan_index) in enumerate(lookups):
            codes = _codes(block[:, j], table, nan_index)
            if strict and (codes < 0).any():
                raise _unknown(encoder, j, codes, block[:, j], names)
            x, keep = _encoded(codes, groupings[j], unknown_joins)
            drop = drops[j]
            if drop is not None:
                keep &= x != drop
                x = np.where(x > drop, x - 1, x)
            out[np.flatnonzero(keep), offsets[j] + x[keep]] = 1.0
        return out

    return Stage(encode, np.repeat(np.arange(len(widths)), widths))


def _ordinal_encoder(encoder: Any, names: list[str]) -> Step:
    _check_encoder(encoder)
    if encoder.handle_unknown not in ("error", "use_encoded_value"):
        raise NotCompilable(f"OrdinalEncoder handle_unknown={encoder.handle_unknown!r}")
    lookups = [_lookup(np.asarray(c)) for c in encoder.categories_]
    groupings = _groupings(encoder)
    use_unknown_value = encoder.handle_unknown == "use_encoded_value"
    missing_indices = dict(getattr(encoder, "_missing_indices", {}) or {})

    def encode(block: Block) -> Block:
        out = np.empty(block.shape, dtype=np.float64)
        for j, (table, nan_index) in enumerate(lookups):
            codes = _codes(block[:, j], table, nan_index)
            if not use_unknown_value and (codes < 0).any():
                raise _unknown(encoder, j, codes, block[:, j], names)
            missing = missing_indices.get(j)
            x, known = _encoded(codes, groupings[j], False, keep_raw=missing)
            column = x.astype(np.float64)
            if missing is not None:  # compared after grouping, as scikit-learn compares
                column[x == missing] = encoder.encoded_missing_value
            if use_unknown_value:
                column[~known] = encoder.unknown_value
            out[:, j] = column
        return out

    return encode


def _shift_then_divide(shift: np.ndarray | None, divide: np.ndarray | None) -> Step:
    """X - shift, then / divide: StandardScaler's and RobustScaler's transform, in their order."""

    def scale_block(block: Block) -> Block:
        out = _as_float(block).copy()
        if shift is not None:
            out -= shift
        if divide is not None:
            out /= divide
        return out

    return scale_block


def _standard_scaler(scaler: Any) -> Step:
    return _shift_then_divide(scaler.mean_ if scaler.with_mean else None, scaler.scale_ if scaler.with_std else None)


def _robust_scaler(scaler: Any) -> Step:
    return _shift_then_divide(
        scaler.center_ if scaler.with_centering else None, scaler.scale_ if scaler.with_scaling else None
    )


def _function_transformer(function: Any) -> Step:
    """A FunctionTransformer of a numpy ufunc (np.log1p, np.sqrt, ...): elementwise, so each output column is its
    input column's; any other function may reshape or rename what it is given, and keeps scikit-learn's path."""
    if not isinstance(function.func, np.ufunc) or function.validate:
        raise NotCompilable("FunctionTransformer of a function other than a numpy ufunc, or with validate=True")
    func, kwargs = function.func, dict(function.kw_args or {})

    def apply(block: Block) -> Block:
        return np.asarray(func(_as_float(block), **kwargs))

    return apply


def _polynomial_features(poly: Any) -> Stage:
    """PolynomialFeatures (dense): each output column the product of its input columns, multiplied in scikit-learn's
    order (a degree-d term is a degree-(d-1) term times its lowest column: x_a * (x_b * x_c)), so bit for bit."""
    combinations = [np.repeat(np.arange(poly.n_features_in_), row) for row in np.asarray(poly.powers_)]

    def expand(block: Block) -> Block:
        x = _as_float(block)
        out = np.empty((x.shape[0], len(combinations)), dtype=np.float64)
        for k, columns in enumerate(combinations):
            if not len(columns):
                out[:, k] = 1.0
                continue
            term = x[:, columns[-1]].copy()
            for j in columns[-2::-1]:
                term *= x[:, j]
            out[:, k] = term
        return out

    # A power of one column comes from it; the bias from none (a constant: no part in any explanation), so any.
    origins = [c[0] if len(set(c.tolist())) == 1 else (0 if not len(c) else MIXED) for c in combinations]
    return Stage(expand, np.asarray(origins, dtype=np.intp))


def _min_max_scaler(scaler: Any) -> Step:
    low, high = scaler.feature_range

    def scale_block(block: Block) -> Block:
        out = _as_float(block).copy()
        out *= scaler.scale_
        out += scaler.min_
        if scaler.clip:
            np.clip(out, low, high, out=out)
        return out

    return scale_block


def _identity(block: Block) -> Block:
    return block


def _check_output_config(estimator: Any) -> None:
    config = getattr(estimator, "_sklearn_output_config", {}) or {}
    if config.get("transform") not in (None, "default"):
        raise NotCompilable(f"{type(estimator).__name__} with set_output(transform={config['transform']!r})")


def transformer(estimator: Any, names: list[str]) -> Stage:
    """A fitted transformer as a block -> block function; ``names`` are its input columns."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (
        FunctionTransformer,
        MinMaxScaler,
        OneHotEncoder,
        OrdinalEncoder,
        PolynomialFeatures,
        RobustScaler,
        StandardScaler,
    )

    if estimator in ("passthrough", None):
        return _one_to_one(_identity, names)
    _check_output_config(estimator)
    kind = type(estimator)
    if kind is FunctionTransformer and estimator.func is None and not estimator.validate:
        return _one_to_one(_identity, names)  # what a fitted ColumnTransformer keeps for remainder="passthrough"
    if kind is SimpleImputer:
        return _simple_imputer(estimator, names)
    if kind is Pipeline:
        return chain([step for _, step in estimator.steps], names)
    if kind is ColumnTransformer:
        return column_transformer(estimator, names)
    if kind is OneHotEncoder:
        return _one_hot_encoder(estimator, names)
    if kind is PolynomialFeatures:
        return _polynomial_features(estimator)
    builders: dict[type, Callable[[Any], Step]] = {
        StandardScaler: _standard_scaler,
        RobustScaler: _robust_scaler,
        FunctionTransformer: _function_transformer,
        MinMaxScaler: _min_max_scaler,
        OrdinalEncoder: lambda e: _ordinal_encoder(e, names),
    }
    if kind not in builders:
        raise NotCompilable(f"{kind.__name__} is not rebuilt here")
    return _one_to_one(builders[kind](estimator), names)


def chain(estimators: list[Any], names: list[str]) -> Stage:
    """Transformers one after another; each output column traced back to the first one's input."""
    steps: list[Step] = []
    origins = np.arange(len(names))
    for estimator in estimators:
        stage = transformer(estimator, [names[i] if i != MIXED else "(a product of columns)" for i in origins])
        steps.append(stage.step)
        origins = _traced(origins, stage.origins)

    def run(block: Block) -> Block:
        for step in steps:
            block = step(block)
        return block

    return Stage(run, origins)


def column_transformer(ct: Any, names: list[str]) -> Stage:
    """The ColumnTransformer's fitted transformers, each on its columns, stacked in fitted order."""
    parts: list[tuple[np.ndarray, Step]] = []
    origins: list[np.ndarray] = []
    for name, fitted, _columns in ct.transformers_:
        indices = np.asarray(ct._transformer_to_input_indices.get(name, []), dtype=np.intp)
        if fitted == "drop" or indices.size == 0:
            continue
        stage = transformer(fitted, [names[i] for i in indices])
        parts.append((indices, stage.step))
        origins.append(_traced(indices, stage.origins))

    def run(block: Block) -> Block:
        outputs = []
        for indices, step in parts:
            selected = block[:, indices]
            if selected.dtype == object and _all_numeric(selected):
                selected = selected.astype(np.float64)
            outputs.append(step(selected))
        return np.hstack(outputs) if outputs else np.empty((block.shape[0], 0))

    return Stage(run, np.concatenate(origins) if origins else np.empty(0, dtype=np.intp))


def _all_numeric(block: Block) -> bool:
    return all(isinstance(v, int | float | np.number | bool | np.bool_) for v in block.ravel())


# ---- the model input: a batch's columns as one block -------------------------------------------------


def block_of(batch: Batch, signature: Signature) -> Block:
    """The batch as one 2-D block in signature order: float64 when every column is numeric, else object."""
    if batch.matrix is not None:
        return batch.matrix
    assert batch.columns is not None
    columns = [batch.columns[name] for name in signature.names]
    if all(c.dtype != object for c in columns):
        return np.column_stack(columns).astype(np.float64, copy=False)
    out = np.empty((batch.rows, len(columns)), dtype=object)
    for j, column in enumerate(columns):
        out[:, j] = column
    return out


def _final_matrix(block: Block) -> np.ndarray:
    try:
        return np.ascontiguousarray(block, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise Unprocessable(
            f"the model's input holds a value that is not a number after preprocessing: {exc}"
        ) from None


# ---- forests -----------------------------------------------------------------------------------------


WALK_ROWS = 128  # measured: the level-by-level walk is faster than per-tree calls up to about here


def all_leaves(trees: list[Any], walk_rows: int = WALK_ROWS) -> Callable[[np.ndarray], np.ndarray]:
    """Every tree's leaf for every row, walking all trees at once: (trees, rows) node ids into the
    trees' concatenated nodes. The walk is the trees' own ``apply``, level by level for the whole
    forest (one Python call per tree costs more than the walk for a few rows): the value as float32
    compared with the float64 threshold, NaN going where the node's missing_go_to_left says."""
    sizes = [tree.node_count for tree in trees]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)

    def joined(name: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(tree, name)) for tree in trees])

    shift = np.repeat(offsets, sizes)
    left, right = joined("children_left"), joined("children_right")
    leaf = left < 0
    left = np.where(leaf, -1, left + shift)
    right = np.where(leaf, -1, right + shift)
    feature = np.where(leaf, 0, joined("feature"))
    threshold = joined("threshold")
    missing_left = joined("missing_go_to_left").astype(bool)

    def leaves(matrix: np.ndarray) -> np.ndarray:
        x32 = np.ascontiguousarray(matrix, dtype=np.float32)
        rows = len(x32)
        if rows > walk_rows:  # many rows: each tree's own Cython walk, one call per tree, is faster
            return np.stack([tree.apply(x32) for tree in trees]) + offsets[:, None]
        node = np.repeat(offsets[:, None], rows, axis=1)
        row = np.broadcast_to(np.arange(rows), node.shape)
        active = np.flatnonzero(~leaf[node.ravel()])
        flat, flat_rows = node.ravel(), row.ravel()
        while active.size:
            at = flat[active]
            value = x32[flat_rows[active], feature[at]]
            go_left = np.where(np.isnan(value), missing_left[at], value.astype(np.float64) <= threshold[at])
            flat[active] = np.where(go_left, left[at], right[at])
            active = active[~leaf[flat[active]]]
        return node

    return leaves


def forest_methods(forest: Any) -> dict[str, Method]:
    """predict (and predict_proba) of a single-output RandomForest/ExtraTrees, tree by tree as sklearn sums them."""
    try:
        from sklearn.ensemble._forest import ForestClassifier, ForestRegressor
    except ImportError as exc:  # private module moved
        raise NotCompilable(str(exc)) from None
    if not isinstance(forest, ForestClassifier | ForestRegressor) or forest.n_outputs_ != 1:
        raise NotCompilable(f"{type(forest).__name__} is not a single-output forest")
    trees = [estimator.tree_ for estimator in forest.estimators_]
    classifier = isinstance(forest, ForestClassifier)
    n_classes = int(forest.n_classes_) if classifier else 1
    # Every tree's leaf values in one table; each tree's node ids are offset into it.
    table = np.concatenate([np.asarray(tree.value)[:, 0, :n_classes] for tree in trees])
    leaves = all_leaves(trees)
    count = len(trees)

    def mean_over_trees(matrix: np.ndarray) -> np.ndarray:
        # cumsum along the trees adds them one after another from the first, as sklearn's
        # accumulation into a zeroed array does: the same sums in the same order.
        total: np.ndarray = np.cumsum(table[leaves(matrix)], axis=0)[-1]
        total /= count
        return total

    if classifier:
        classes = np.asarray(forest.classes_)

        def predict_proba(matrix: np.ndarray) -> np.ndarray:
            return mean_over_trees(matrix)

        def predict(matrix: np.ndarray) -> np.ndarray:
            indices: np.ndarray = np.argmax(mean_over_trees(matrix), axis=1)
            return classes.take(indices, axis=0)

        return {"predict": predict, "predict_proba": predict_proba}

    def predict_values(matrix: np.ndarray) -> np.ndarray:
        return mean_over_trees(matrix)[:, 0]

    return {"predict": predict_values}


# ---- histogram gradient boosting ---------------------------------------------------------------------

# measured (100 trees): the level walk took 1.21 ms for 64 rows against the per-predictor calls' 1.39 ms,
# 1.83 ms for 100 rows against 1.56 ms
HGB_WALK_ROWS = 64


def hgb_own_encoding(model: Any) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray] | None:
    """HistGradientBoosting's own step before its trees, rebuilt, and for each column it outputs the input
    column it comes from (None without one): with categorical features, their values become codes (an
    unknown value or a gap, NaN) and move to the front, the numbers follow as they are. The categories are
    numbers (categorical_features by index, on codes) or, fitted on a DataFrame's category dtypes, strings:
    then the input is an object block, as the signature's columns arrive."""
    prepare = getattr(model, "_preprocessor", None)
    if prepare is None:
        return None
    layout: list[tuple[slice, np.ndarray, list[Callable[[np.ndarray], np.ndarray]] | None]] = []
    origins = np.zeros(model.n_features_in_, dtype=np.intp)
    for name, step, columns in prepare.transformers_:
        where = prepare.output_indices_.get(name, slice(0, 0))
        if where.stop == where.start:
            continue
        picked = np.flatnonzero(columns) if np.asarray(columns).dtype == bool else np.asarray(columns, dtype=np.intp)
        origins[where] = picked
        if name == "encoder":
            if step.handle_unknown != "use_encoded_value" or not (
                np.isnan(step.unknown_value) and np.isnan(step.encoded_missing_value)
            ):
                raise NotCompilable("HistGradientBoosting with an encoder configured otherwise than its own")
            layout.append((where, picked, [_hgb_category_codes(np.asarray(c)) for c in step.categories_]))
        elif name == "numerical":
            layout.append((where, picked, None))
        else:
            raise NotCompilable(f"HistGradientBoosting preprocessing step {name!r} is not rebuilt here")

    def encode(matrix: np.ndarray) -> np.ndarray:
        out = np.empty(matrix.shape, dtype=np.float64)
        for where, picked, categories in layout:
            block = matrix[:, picked]
            if categories is None:
                out[:, where] = _final_matrix(block)
                continue
            for j, codes in enumerate(categories):
                out[:, where.start + j] = codes(block[:, j])
        return out

    return encode, origins


def _hgb_category_codes(categories: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """One categorical column's values -> their codes in HistGradientBoosting's own encoder, NaN for a missing
    or unknown value (its encoder's unknown and missing value)."""
    if categories.dtype != object:
        known = categories.astype(np.float64)
        known = known[~np.isnan(known)]

        def numbers(values: np.ndarray) -> np.ndarray:
            values = _final_matrix(values)
            index = np.minimum(np.searchsorted(known, values), max(len(known) - 1, 0))
            found = (known[index] == values) if len(known) else np.zeros(len(values), dtype=bool)
            return np.where(found, index, np.nan)

        return numbers
    table, _ = _lookup(categories)  # a pandas category dtype holds no missing value among its categories

    def strings(values: np.ndarray) -> np.ndarray:
        codes = _codes(values, table, None).astype(np.float64)
        codes[codes < 0] = np.nan
        return codes

    return strings


def hist_gradient_boosting_methods(model: Any) -> dict[str, Method]:
    """HistGradientBoosting's predict, predict_proba and decision_function: every predictor's leaf found for
    all trees at once, level by level (NaN and categories routed as its predictors route them), the leaf values
    added to the baseline in iteration order as scikit-learn adds them, then its own link and classes."""
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import BaseHistGradientBoosting

    from .treeshap import hgb_category_tables, hgb_known_categories

    if not isinstance(model, BaseHistGradientBoosting):
        raise NotCompilable(f"{type(model).__name__} is not a HistGradientBoosting model")
    own_encoding = hgb_own_encoding(model)
    encode = own_encoding[0] if own_encoding is not None else _final_matrix
    known, feature_map = hgb_known_categories(model)
    trees = [predictor for iteration in model._predictors for predictor in iteration]
    outputs = len(model._predictors[0])
    column = np.tile(np.arange(outputs), len(model._predictors))  # the raw output each tree adds to
    sizes = [len(p.nodes) for p in trees]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    nodes = np.concatenate([p.nodes for p in trees])
    shift = np.repeat(offsets, sizes)
    leaf = nodes["is_leaf"].astype(bool)
    left = np.where(leaf, -1, nodes["left"].astype(np.intp) + shift)
    right = np.where(leaf, -1, nodes["right"].astype(np.intp) + shift)
    feature = np.where(leaf, 0, nodes["feature_idx"].astype(np.intp))
    threshold = nodes["num_threshold"].astype(np.float64)
    missing_left = nodes["missing_go_to_left"].astype(bool)
    categorical = nodes["is_categorical"].astype(bool) & ~leaf
    table_of = np.full(len(nodes), -1, dtype=np.intp)
    tables: list[np.ndarray] = []
    count = 0
    for tree, predictor in enumerate(trees):
        category, own = hgb_category_tables(predictor, known, feature_map)
        split = category >= 0
        table_of[offsets[tree] + np.flatnonzero(split)] = category[split] + count
        tables.append(own)
        count += len(own)
    lookup = np.concatenate(tables) if tables else np.zeros((0, 256), dtype=bool)
    values = nodes["value"].astype(np.float64)
    baseline = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(1, outputs)

    def raw(matrix: np.ndarray) -> np.ndarray:
        x = encode(matrix)
        rows = len(x)
        if rows > HGB_WALK_ROWS:  # many rows: each predictor's own Cython walk, added as scikit-learn adds it
            out = np.zeros((rows, outputs), order="F")
            out += baseline
            x = np.ascontiguousarray(x)
            for predictor, k in zip(trees, column, strict=True):
                out[:, k] += predictor.predict(x, known, feature_map, n_threads=1)
            return out
        node = np.repeat(offsets[:, None], rows, axis=1)
        flat, flat_rows = node.ravel(), np.tile(np.arange(rows), len(trees))
        active = np.flatnonzero(~leaf[flat])
        while active.size:
            at = flat[active]
            value = x[flat_rows[active], feature[at]]
            go_left = np.where(np.isnan(value), missing_left[at], value <= threshold[at])
            cat = categorical[at]
            if cat.any():
                codes = value[cat]
                usable = ~np.isnan(codes) & (codes >= 0) & (codes < 256)
                index = np.where(usable, codes, 0).astype(np.intp)
                go_left[cat] = np.where(usable, lookup[table_of[at[cat]], index], missing_left[at[cat]])
            flat[active] = np.where(go_left, left[at], right[at])
            active = active[~leaf[flat[active]]]
        # baseline first, then each tree's leaf value into its output column, in iteration order
        added = np.zeros((len(trees) + 1, rows, outputs))
        added[0] = baseline
        added[np.arange(1, len(trees) + 1)[:, None], np.arange(rows)[None, :], column[:, None]] = values[node]
        total: np.ndarray = np.cumsum(added, axis=0)[-1]
        return total

    if not hasattr(model, "classes_"):
        inverse = model._loss.link.inverse

        def predict_values(matrix: np.ndarray) -> np.ndarray:
            return np.asarray(inverse(raw(matrix).ravel()))

        return {"predict": predict_values}
    return _boosted_classifier(raw, model, zero_is_positive=False)


def _boosted_classifier(
    raw: Callable[[np.ndarray], np.ndarray], model: Any, zero_is_positive: bool
) -> dict[str, Method]:
    """decision_function, predict_proba and predict of a boosted classifier from ``raw`` (rows, outputs): the
    model's own loss for probabilities, its classes for labels. A binary score of exactly 0 is the positive
    class where ``zero_is_positive`` (GradientBoosting's ``>= 0``; HistGradientBoosting's ``> 0``)."""
    classes = np.asarray(model.classes_)
    loss = model._loss

    def decision_function(matrix: np.ndarray) -> np.ndarray:
        scores = raw(matrix)
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(loss.predict_proba(decision_function(matrix)))

    def predict(matrix: np.ndarray) -> np.ndarray:
        scores = decision_function(matrix)
        if scores.ndim == 2:
            encoded: np.ndarray = np.argmax(scores, axis=1)
        else:
            encoded = (scores >= 0 if zero_is_positive else scores > 0).astype(int)
        return classes.take(encoded, axis=0)

    return {"predict": predict, "predict_proba": predict_proba, "decision_function": decision_function}


# ---- gradient boosting (the exact, non-histogram kind) ----------------------------------------------------

# measured (100 depth-3 trees, diabetes): the level walk took 131 µs for 30 rows against the per-tree calls'
# 191 µs, 251 µs for 64 rows against 211 µs; shallow trees make the per-tree calls pay sooner than a forest's
GB_WALK_ROWS = 48


def gradient_boosting_methods(model: Any) -> dict[str, Method]:
    """GradientBoosting's predict, predict_proba and decision_function: every stage's leaf for all trees at once
    (all_leaves), each leaf value times the learning rate added to the initial raw prediction stage by stage, as
    predict_stages adds them, then the model's own link and classes. Only with the default initial estimator,
    whose raw start is one constant row (computed here once). A NaN goes right at every split, as scikit-learn's
    own loop sends it when its input check is off (the server's setting, model.configure_scikit_learn), whatever
    the tree's missing_go_to_left (which all_leaves follows for NaN) says."""
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    if type(model) not in (GradientBoostingClassifier, GradientBoostingRegressor):
        raise NotCompilable(f"{type(model).__name__} is not a GradientBoosting model")
    if not (isinstance(model.init_, str) and model.init_ == "zero") and type(model.init_) not in (
        DummyClassifier,
        DummyRegressor,
    ):
        raise NotCompilable(f"GradientBoosting started from {type(model.init_).__name__}: its start depends on the row")
    stages = np.asarray(model.estimators_)  # (stages, outputs) regression trees
    outputs = stages.shape[1]
    with warnings.catch_warnings():  # a frame-fitted model's trees were fitted on its array: no names to warn of
        warnings.simplefilter("ignore")
        start = np.asarray(model._raw_predict_init(np.zeros((1, model.n_features_in_), np.float32)), np.float64)
    by_output = []
    for k in range(outputs):
        trees = [estimator.tree_ for estimator in stages[:, k]]
        # scale * leaf value, the product predict_stages forms before adding it
        scaled = model.learning_rate * np.concatenate([np.asarray(tree.value)[:, 0, 0] for tree in trees])
        by_output.append((all_leaves(trees, GB_WALK_ROWS), scaled, start[0, k]))

    def raw(matrix: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # past float32's range is infinity, as in scikit-learn's own cast
            x32 = np.ascontiguousarray(matrix, dtype=np.float32)
        missing = np.isnan(x32)
        if missing.any():  # predict_stages compares NaN like any number: never <= a threshold, so right
            x32 = np.where(missing, np.float32(np.inf), x32)
        out = np.empty((len(x32), outputs))
        for k, (leaves, scaled, first) in enumerate(by_output):
            added = scaled[leaves(x32)]  # (stages, rows)
            # the start, then each stage in order: cumsum adds them one after another, as the trees' loop does
            out[:, k] = np.cumsum(np.vstack([np.full((1, len(x32)), first), added]), axis=0)[-1]
        return out

    if outputs == 1 and not hasattr(model, "classes_"):

        def predict_values(matrix: np.ndarray) -> np.ndarray:
            return raw(matrix).ravel()

        return {"predict": predict_values}
    return _boosted_classifier(raw, model, zero_is_positive=True)


# ---- logistic regression -----------------------------------------------------------------------------


def logistic_methods(model: Any) -> dict[str, Method]:
    """LogisticRegression's predict, predict_proba and decision_function on a dense float64 matrix:
    its own arithmetic (X @ coef_.T + intercept_, then expit or softmax) without the input checks."""
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression
    from sklearn.utils.extmath import softmax

    if type(model) is not LogisticRegression:
        raise NotCompilable(f"{type(model).__name__} is not a LogisticRegression")
    coef_t = np.asarray(model.coef_).T
    intercept = np.asarray(model.intercept_)
    classes = np.asarray(model.classes_)
    binary = len(classes) <= 2

    def decision_function(matrix: np.ndarray) -> np.ndarray:
        scores: np.ndarray = matrix @ coef_t + intercept
        return scores.reshape(-1) if scores.shape[1] == 1 else scores

    def predict(matrix: np.ndarray) -> np.ndarray:
        scores = decision_function(matrix)
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return classes.take(indices, axis=0)

    def predict_proba(matrix: np.ndarray) -> np.ndarray:
        scores = decision_function(matrix)
        if binary:
            positive = expit(scores, out=scores)
            return np.stack([1 - positive, positive], axis=1)
        probabilities: np.ndarray = softmax(scores, copy=False)
        return probabilities

    return {"predict": predict, "predict_proba": predict_proba, "decision_function": decision_function}


def final_methods(final: Any) -> tuple[dict[str, Method], str]:
    """Compiled methods of a Pipeline's final step where there are some, and how to name the path."""
    for build in (forest_methods, hist_gradient_boosting_methods, gradient_boosting_methods, logistic_methods):
        try:
            return build(final), f"compiled {type(final).__name__}"
        except NotCompilable:
            continue
    return {}, f"{type(final).__name__} methods"


# ---- plans -------------------------------------------------------------------------------------------


def plan(model: Any, signature: Signature, outputs: tuple[str, ...]) -> Plan:
    """The compiled plan for ``model``; NotCompilable when nothing here makes it faster."""
    from sklearn.pipeline import Pipeline

    names = list(signature.names)
    if type(model) is Pipeline:
        _check_output_config(model)
        steps = [step for _, step in model.steps]
        final = steps[-1]
        if final in ("passthrough", None) or hasattr(final, "feature_names_in_"):
            raise NotCompilable("a Pipeline whose final step is passthrough or was fitted on a DataFrame")
        prepare = chain(steps[:-1], names)
        methods, final_path = final_methods(final)
        path = f"compiled preprocessing + {final_path}"
        for name in outputs:
            methods.setdefault(name, getattr(final, name))

        def encode(batch: Batch) -> np.ndarray:
            return _final_matrix(prepare.step(block_of(batch, signature)))

        return Plan(encode, {name: methods[name] for name in outputs}, path, final, prepare.origins)
    strings = [j for j, column in enumerate(signature.columns) if column.datatype == BYTES]
    if strings and not _encodes_its_own_strings(model, strings):
        raise NotCompilable("a bare estimator fitted on strings")
    methods, path = final_methods(model)
    if not methods:
        raise NotCompilable(f"{type(model).__name__} is not rebuilt here")
    if signature.frame and not set(outputs) <= set(methods):
        # A model fitted on a DataFrame warns on every array it is given: its own methods keep the frame.
        missing = sorted(set(outputs) - set(methods))
        raise NotCompilable(f"{type(model).__name__} fitted on a DataFrame, with {missing} not rebuilt here")
    for name in outputs:
        methods.setdefault(name, getattr(model, name))

    def model_input(batch: Batch) -> np.ndarray:
        # strings reach the model's own encoder as they came (an object block); numbers as one float matrix
        block = block_of(batch, signature)
        return block if strings else _final_matrix(block)

    return Plan(
        model_input,
        {n: methods[n] for n in outputs},
        path,
        model,
        np.arange(len(names)),
    )


def _encodes_its_own_strings(model: Any, columns: list[int]) -> bool:
    """Whether ``model`` turns these input columns' strings into codes itself: a HistGradientBoosting model fitted
    on a DataFrame's category dtypes (its default, categorical_features="from_dtype")."""
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import BaseHistGradientBoosting

    categorical = getattr(model, "is_categorical_", None)
    return (
        isinstance(model, BaseHistGradientBoosting)
        and categorical is not None
        and bool(np.all(np.asarray(categorical)[columns]))
    )


# ---- the proof ---------------------------------------------------------------------------------------

UNSEEN = "\x00unseen category\x00"


def probe_batches(signature: Signature, rows: int = 48, seed: int = 0) -> list[Batch]:
    """Batches that exercise what a compiled plan must get right: every category, spread numbers,
    nulls where nullable; then single rows; then one row per string column with an unseen value."""
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    for column in signature.columns:
        example = column.example
        if column.datatype == BYTES:
            values = list(column.categories) or [str(example)]
            data = np.array([values[i % len(values)] for i in range(rows)], dtype=object)
        elif column.datatype == BOOL:
            data = rng.random(rows) > 0.5
        elif column.datatype == INT64:
            spread = max(abs(int(example)), 1)
            data = int(example) + rng.integers(-spread, spread + 1, rows)
        else:
            scale = abs(float(example)) + 1.0
            data = float(example) + rng.normal(0, scale, rows)
        if column.nullable:
            data = data.astype(np.float64) if column.datatype in (FP64, INT64) else data.astype(object)
            data[rng.random(rows) < 0.2] = np.nan
        columns[column.name] = data
    batches = [Batch(rows=rows, columns=columns)]
    batches += [Batch(rows=1, columns={k: v[i : i + 1] for k, v in columns.items()}) for i in range(3)]
    for column in signature.columns:
        if column.datatype == BYTES:
            unseen = {k: v[:1].copy() for k, v in columns.items()}
            unseen[column.name] = np.array([UNSEEN], dtype=object)
            batches.append(Batch(rows=1, columns=unseen))
    return batches


def _answers(encode: Callable[[Batch], Any], methods: dict[str, Method], batch: Batch) -> dict[str, Any] | str:
    """Every output for ``batch``, or the kind of error that refused it."""
    try:
        # Load time only: scikit-learn's warnings about the probes' unseen categories are expected.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            model_input = encode(batch)
            return {name: method(model_input) for name, method in methods.items()}
    except Exception as exc:  # the reference path's refusals are what the plan must match
        return (
            f"refused ({'client' if isinstance(exc, Unprocessable | ValueError | TypeError) else type(exc).__name__})"
        )


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a.toarray() if hasattr(a, "toarray") else a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return bool(np.allclose(a.astype(float), b.astype(float), rtol=1e-9, atol=1e-12, equal_nan=True))
    return bool(np.array_equal(a, b))


def prove(candidate: Plan, reference: Plan, batches: list[Batch]) -> str | None:
    """None when ``candidate`` answers every probe batch as ``reference`` does, else what differed.
    NotCompilable when the reference refuses the main batch itself (no evidence either way)."""
    for index, batch in enumerate(batches):
        expected = _answers(reference.encode, reference.methods, batch)
        if index == 0 and isinstance(expected, str):
            raise NotCompilable(f"scikit-learn itself {expected} the main probe batch: nothing to compare with")
        got = _answers(candidate.encode, candidate.methods, batch)
        if isinstance(expected, str) or isinstance(got, str):
            if expected != got:
                return (
                    f"probe batch {index}: scikit-learn {expected if isinstance(expected, str) else 'answered'}, "
                    f"compiled {got if isinstance(got, str) else 'answered'}"
                )
            continue
        for name in expected:
            if not _same(got[name], expected[name]):
                return f"probe batch {index}: {name} differs"
    return None
