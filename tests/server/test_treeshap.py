"""Exact tree explanations (core/treeshap.py): the same Shapley values as SHAP's TreeExplainer, to 1e-6.

Every family is fitted on a DataFrame, as users fit them, with gaps where the family takes them. Where SHAP
has no explainer (multiclass GradientBoosting, HistGradientBoosting's categorical splits) the reference is
the definition itself: Shapley values of the path-dependent game, summed over every coalition.
"""

from __future__ import annotations

import dataclasses
from itertools import combinations
from math import factorial

import numpy as np
import pandas as pd
import pytest
import shap
from model_server import package
from model_server.core import artifact, explain, treeshap
from model_server.transport.app import create_app
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from .conftest import make_settings

RNG = np.random.default_rng(11)
N = 300
FRAME = pd.DataFrame(
    {
        "age": RNG.integers(18, 80, N).astype(float),
        "spend": RNG.gamma(2.0, 40.0, N),
        "tenure": RNG.integers(0, 120, N).astype(float),
        "calls": RNG.poisson(3, N).astype(float),
    }
)
_SCORE = FRAME["spend"] / 40 + (FRAME["age"] > 50) * 1.5 - FRAME["tenure"] / 60 + RNG.normal(0, 0.3, N)
TARGETS = {
    "regression": _SCORE.to_numpy(),
    "binary": (_SCORE.median() < _SCORE).to_numpy(),
    "three classes": np.digitize(_SCORE, np.percentile(_SCORE, [33, 66])),
}
WITH_GAPS = FRAME.mask(RNG.random(FRAME.shape) < 0.1)  # 10 % missing, for the families that route NaN

FAMILIES = {
    "decision tree regressor": (lambda: DecisionTreeRegressor(max_depth=6, random_state=0), "regression", True),
    "decision tree, three classes": (lambda: DecisionTreeClassifier(random_state=0), "three classes", True),
    "random forest regressor": (lambda: RandomForestRegressor(40, random_state=0), "regression", True),
    "random forest, binary": (lambda: RandomForestClassifier(30, random_state=0), "binary", True),
    "random forest, three classes": (lambda: RandomForestClassifier(30, random_state=0), "three classes", True),
    "extra trees regressor": (lambda: ExtraTreesRegressor(30, random_state=0), "regression", False),
    "extra trees, binary": (lambda: ExtraTreesClassifier(30, random_state=0), "binary", False),
    "gradient boosting regressor": (lambda: GradientBoostingRegressor(random_state=0), "regression", False),
    "gradient boosting, binary": (lambda: GradientBoostingClassifier(random_state=0), "binary", False),
    "hist gradient boosting regressor": (lambda: HistGradientBoostingRegressor(max_iter=60), "regression", True),
    "hist gradient boosting, binary": (lambda: HistGradientBoostingClassifier(max_iter=60), "binary", True),
    "hist gradient boosting, three classes": (
        lambda: HistGradientBoostingClassifier(max_iter=40),
        "three classes",
        True,
    ),
}


def fitted(family: str):
    make, target, gaps = FAMILIES[family]
    data = WITH_GAPS if gaps else FRAME
    return make().fit(data, TARGETS[target]), data


def shap_reference(model, rows: pd.DataFrame, explained: np.ndarray) -> np.ndarray:
    """SHAP's TreeExplainer values for the explained output of each row."""
    values = np.asarray(shap.TreeExplainer(model).shap_values(rows, check_additivity=False))
    if values.ndim == 2:
        return values
    return values[np.arange(len(rows)), :, explained]  # (rows, columns, outputs)


def explained_output(model, rows: pd.DataFrame) -> np.ndarray:
    if not hasattr(model, "classes_"):
        return np.zeros(len(rows), dtype=int)
    proba = model.predict_proba(rows)
    return np.full(len(rows), 1) if proba.shape[1] == 2 else proba.argmax(axis=1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_contributions_are_shaps_tree_explainer_values(family):
    model, data = fitted(family)
    rows = data.sample(60, random_state=2)
    _, decompose, sklearn_value = explain.trees(model)
    contributions, baseline, value = decompose(rows.to_numpy())
    expected = shap_reference(model, rows, explained_output(model, rows))
    np.testing.assert_allclose(contributions, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(baseline + contributions.sum(axis=1), value, rtol=0, atol=1e-6)
    np.testing.assert_allclose(value, sklearn_value(rows), rtol=0, atol=1e-9)


# ---- the definition, for what SHAP does not cover -------------------------------------------------------


def _expected_value(tree: treeshap._Tree, node: int, x: np.ndarray, known: frozenset[int], goes_left) -> np.ndarray:
    """The path-dependent value of coalition ``known``: known features follow x, others the training cover."""
    if tree.left[node] < 0:
        return tree.values[node]
    left, right = int(tree.left[node]), int(tree.right[node])
    if tree.feature[node] in known:
        return _expected_value(tree, left if goes_left(tree, node, x) else right, x, known, goes_left)
    share = tree.cover[left] / tree.cover[node]
    return share * _expected_value(tree, left, x, known, goes_left) + (1 - share) * _expected_value(
        tree, right, x, known, goes_left
    )


def _shapley_by_definition(trees, x: np.ndarray, output: int, goes_left) -> np.ndarray:
    features = x.shape[0]
    phi = np.zeros(features)

    def v(coalition: frozenset[int]) -> float:
        return sum(_expected_value(tree, 0, x, coalition, goes_left)[output] for tree in trees)

    for i in range(features):
        others = [j for j in range(features) if j != i]
        for size in range(features):
            weight = factorial(size) * factorial(features - size - 1) / factorial(features)
            for coalition in combinations(others, size):
                phi[i] += weight * (v(frozenset(coalition) | {i}) - v(frozenset(coalition)))
    return phi


def _numeric_routing(tree, node, x) -> bool:
    value = x[tree.feature[node]]
    return bool(tree.missing_left[node]) if np.isnan(value) else bool(np.float32(value) <= tree.threshold[node])


def test_multiclass_gradient_boosting_matches_the_definition():
    model = GradientBoostingClassifier(n_estimators=8, max_depth=3, random_state=0)
    model.fit(FRAME, TARGETS["three classes"])
    trees = [
        treeshap._sklearn_tree(e.tree_, treeshap._one_column(e.tree_.value[:, 0, 0] * model.learning_rate, k, 3))
        for stage in model.estimators_
        for k, e in enumerate(stage)
    ]
    rows = FRAME.to_numpy()[:5]
    _, decompose, sklearn_value = explain.trees(model)
    contributions, baseline, value = decompose(rows)
    with pytest.warns(UserWarning, match="feature names"):  # fitted on a DataFrame, asked with an array
        chosen = model.decision_function(rows).argmax(axis=1)
    for row, output, got in zip(rows, chosen, contributions, strict=True):
        np.testing.assert_allclose(got, _shapley_by_definition(trees, row, output, _numeric_routing), atol=1e-9)
    np.testing.assert_allclose(value, sklearn_value(rows), atol=1e-9)
    np.testing.assert_allclose(baseline + contributions.sum(axis=1), value, atol=1e-9)


@pytest.mark.parametrize("categories", ["codes", "strings"])
def test_categorical_splits_route_as_scikit_learn_and_match_the_definition(categories):
    codes = FRAME.assign(plan=RNG.integers(0, 6, N).astype(float))
    codes.loc[RNG.random(N) < 0.1, "plan"] = np.nan
    # gaps score like plans 1 and 4: the splits send them (and unseen codes) left, where the bitset sends 1, 4
    target = TARGETS["regression"] + (np.isin(codes["plan"], [1, 4]) | codes["plan"].isna()) * 2.0
    if categories == "codes":  # categorical_features by name, on numeric codes
        model = HistGradientBoostingRegressor(max_iter=6, max_depth=3, categorical_features=["plan"])
        # unseen codes (7, 300), negative ones and gaps go where scikit-learn sends them
        unseen: list = [7.0, 300.0, -1.0, np.nan]
    else:  # a notebook's DataFrame: a pandas category dtype of strings, categorical_features="from_dtype"
        names = {float(c): f"plan {int(c)}" for c in range(6)}
        codes = codes.assign(plan=codes["plan"].map(names).astype(pd.CategoricalDtype([names[c] for c in names])))
        model = HistGradientBoostingRegressor(max_iter=6, max_depth=3, categorical_features="from_dtype")
        unseen = ["plan 7", "", None, np.nan]
    model.fit(codes, target)
    ensemble = treeshap.hist_gradient_boosting(model)
    assert ensemble.category_left.shape[0] > 0, "the model must split on the categorical column"
    splits = [n for (p,) in model._predictors for n in p.nodes if n["is_categorical"] and not n["is_leaf"]]
    assert any(n["missing_go_to_left"] for n in splits), "unknown codes must go left somewhere, not only right"
    probe = codes.head(40).astype({"plan": object})
    probe.loc[probe.index[:4], "plan"] = unseen
    _, decompose, sklearn_value = explain.trees(model)
    contributions, baseline, value = decompose(probe.to_numpy())
    np.testing.assert_allclose(value, sklearn_value(probe.to_numpy()), rtol=0, atol=1e-9)
    np.testing.assert_allclose(baseline + contributions.sum(axis=1), value, rtol=0, atol=1e-9)
    trees = []
    known, feature_map = model._bin_mapper.make_known_categories_bitsets()
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        leaf = nodes["is_leaf"].astype(bool)
        trees.append(
            (
                treeshap._Tree(
                    left=np.where(leaf, -1, nodes["left"].astype(int)),
                    right=np.where(leaf, -1, nodes["right"].astype(int)),
                    feature=nodes["feature_idx"].astype(int),
                    threshold=nodes["num_threshold"],
                    missing_left=nodes["missing_go_to_left"].astype(bool),
                    cover=nodes["count"].astype(float),
                    values=nodes["value"].reshape(-1, 1),
                ),
                predictor,
            )
        )

    def routing(tree, node, x):
        predictor = next(p for t, p in trees if t is tree)
        record = predictor.nodes[node]
        value = x[record["feature_idx"]]
        if np.isnan(value) or (record["is_categorical"] and value < 0):
            return bool(record["missing_go_to_left"])
        if not record["is_categorical"]:
            return bool(value <= record["num_threshold"])
        code = int(value)

        def member(bitset) -> bool:
            return code < 256 and bool((int(bitset[code // 32]) >> (code % 32)) & 1)

        if member(predictor.raw_left_cat_bitsets[record["bitset_idx"]]):
            return True
        if member(known[feature_map[record["feature_idx"]]]):
            return False
        return bool(record["missing_go_to_left"])  # an unknown category goes where the gaps go

    # the trees read the model's own encoding of its input: codes for categories, categorical columns first
    encoded = model._preprocessor.transform(probe.head(8))
    plan = list(codes.columns).index("plan")
    order = [plan] + [i for i in range(codes.shape[1]) if i != plan]
    plain = [t for t, _ in trees]
    for row, got in zip(encoded, contributions[:8], strict=True):
        by_definition = np.zeros(len(order))
        by_definition[order] = _shapley_by_definition(plain, row, 0, routing)
        np.testing.assert_allclose(got, by_definition, atol=1e-9)


def test_precomputed_patterns_and_polynomials_give_the_same_values(monkeypatch):
    model, data = fitted("random forest, three classes")
    ensemble = treeshap.forest(model.estimators_, True, 3)
    assert ensemble.patterns is not None
    rows = data.to_numpy()[:30]
    output = np.full(30, 2)
    without = dataclasses.replace(ensemble)
    monkeypatch.setattr(treeshap, "PATTERN_CELLS", 0)
    assert without.patterns is None
    np.testing.assert_allclose(ensemble.shapley(rows, 4, output), without.shapley(rows, 4, output), atol=1e-12)


def test_an_ensemble_beyond_the_budget_is_refused_by_name(monkeypatch):
    model, _ = fitted("random forest regressor")
    monkeypatch.setattr(treeshap, "MAX_CELLS", 1000)
    with pytest.raises(explain.NotExplainable, match="RandomForestRegressor is too large to explain exactly"):
        explain.trees(model)


# ---- served ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family",
    ["random forest regressor", "gradient boosting, binary", "hist gradient boosting, three classes"],
)
def test_a_bare_estimator_fitted_on_a_dataframe_is_explained_over_v1_and_v2(family, tmp_path):
    model, data = fitted(family)
    metadata = package.describe(model, data.head(50), name="m", version="1", target=None, training_data={})
    artifact.save(model, metadata, tmp_path / "m")
    client = create_app(make_settings(tmp_path / "m")).test_client()
    rows = data.sample(5, random_state=4)
    expected = shap_reference(model, rows, explained_output(model, rows))
    columns = list(data.columns)
    inputs = [
        {"name": c, "shape": [5], "datatype": "FP64", "data": [None if np.isnan(v) else v for v in rows[c]]}
        for c in columns
    ]
    v2 = client.post("/v2/models/m/infer", json={"inputs": inputs, "outputs": [{"name": "contributions"}]})
    assert v2.status_code == 200, v2.get_json()
    got = np.reshape(v2.get_json()["outputs"][0]["data"], (5, len(columns)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    instances = [{c: (None if np.isnan(v) else v) for c, v in row.items()} for row in rows.to_dict("records")]
    v1 = client.post("/v1/models/m:explain", json={"instances": instances})
    assert v1.status_code == 200, v1.get_json()
    for explanation, want in zip(v1.get_json()["explanations"], expected, strict=True):
        assert [explanation["contributions"][c] for c in columns] == pytest.approx(list(want), abs=1e-6)
        assert "TreeSHAP" in client.get("/v2/models/m").get_json()["outputs"][-1]["parameters"]["method"]
