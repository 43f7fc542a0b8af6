"""Compiled plans answer exactly what scikit-learn answers, are used only when proved, and fall back otherwise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sklearn
from model_server import package
from model_server.config import MODEL_METHODS
from model_server.core import compiled
from model_server.core.columns import Batch
from model_server.core.runner import ModelRunner
from model_server.errors import Unprocessable
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    PolynomialFeatures,
    RobustScaler,
    StandardScaler,
)

RNG = np.random.default_rng(11)
N = 200


def data() -> pd.DataFrame:
    x = pd.DataFrame(
        {
            "shade": RNG.choice(["dark", "light", "mid"], N),
            "shape": RNG.choice(["round", "square"], N),
            "weight": RNG.normal(50, 10, N),
            "age": RNG.integers(0, 30, N),
            "flag": RNG.random(N) > 0.3,
        }
    )
    x.loc[::6, "weight"] = np.nan
    x.loc[2::9, "shade"] = np.nan
    return x


X = data()
Y_CLASS = np.where(X["weight"].fillna(50) + (X["shade"] == "dark") * 8 > 52, "heavy", "light")
Y_THREE = np.digitize(X["age"], [10, 20])
Y_REG = X["weight"].fillna(50).to_numpy() * 0.3 + X["age"].to_numpy()


def ct(strings, numbers=None, remainder="drop", **kwargs):
    numbers = numbers or make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    return ColumnTransformer(
        [("s", strings, ["shade", "shape"]), ("n", numbers, ["weight", "age"])], remainder=remainder, **kwargs
    )


def impute_then(encoder):
    return make_pipeline(SimpleImputer(strategy="most_frequent"), encoder)


def poly_numbers(degree, **options):
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), PolynomialFeatures(degree, **options))


PIPELINES = {
    "one-hot + logistic (binary)": (
        lambda: Pipeline([("p", ct(impute_then(OneHotEncoder(handle_unknown="ignore")))), ("m", LogisticRegression())]),
        Y_CLASS,
    ),
    "one-hot drop=first + logistic (three classes)": (
        lambda: Pipeline(
            [("p", ct(impute_then(OneHotEncoder(drop="first", handle_unknown="ignore")))), ("m", LogisticRegression())]
        ),
        Y_THREE,
    ),
    "one-hot if_binary, NaN as a category, passthrough flag": (
        lambda: Pipeline(
            [
                ("p", ct(OneHotEncoder(drop="if_binary", sparse_output=False), remainder="passthrough")),
                ("m", LogisticRegression(max_iter=500)),
            ]
        ),
        Y_CLASS,
    ),
    "ordinal with unknown and missing values + random forest": (
        lambda: Pipeline(
            [
                (
                    "p",
                    ct(
                        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2),
                        SimpleImputer(strategy="constant", fill_value=0.0),
                    ),
                ),
                ("m", RandomForestClassifier(n_estimators=15, random_state=0)),
            ]
        ),
        Y_CLASS,
    ),
    "min-max clip + ridge": (
        lambda: Pipeline(
            [
                (
                    "p",
                    ct(
                        impute_then(OneHotEncoder(handle_unknown="ignore")),
                        make_pipeline(SimpleImputer(strategy="mean"), MinMaxScaler(clip=True)),
                    ),
                ),
                ("m", Ridge()),
            ]
        ),
        Y_REG,
    ),
    "column selector + forest regressor": (
        lambda: Pipeline(
            [
                (
                    "p",
                    ColumnTransformer(
                        [
                            ("s", impute_then(OrdinalEncoder()), make_column_selector(dtype_include=object)),
                            ("n", SimpleImputer(), make_column_selector(dtype_include="number")),
                        ]
                    ),
                ),
                ("m", RandomForestRegressor(n_estimators=10, random_state=0)),
            ]
        ),
        Y_REG,
    ),
    "one-hot + gradient boosting (three classes)": (
        lambda: Pipeline(
            [
                ("p", ct(impute_then(OneHotEncoder(handle_unknown="ignore")))),
                ("m", GradientBoostingClassifier(n_estimators=20, random_state=0)),
            ]
        ),
        Y_THREE,
    ),
    "ordinal + gradient boosting regressor (huber)": (
        lambda: Pipeline(
            [
                ("p", ct(impute_then(OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)))),
                ("m", GradientBoostingRegressor(loss="huber", n_estimators=25, random_state=0)),
            ]
        ),
        Y_REG,
    ),
    "imputer flagging its missing values + arcsinh + robust scaler + logistic": (
        lambda: Pipeline(
            [
                (
                    "p",
                    ct(
                        SimpleImputer(strategy="constant", fill_value="none", add_indicator=True),
                        make_pipeline(
                            SimpleImputer(strategy="median", add_indicator=True),
                            FunctionTransformer(np.arcsinh),  # log-like, defined for every probe value
                            RobustScaler(quantile_range=(10, 90)),
                        ),
                    ),
                ),
                (
                    "p2",
                    ColumnTransformer([("s", OneHotEncoder(handle_unknown="ignore"), [0, 1])], remainder="passthrough"),
                ),
                ("m", LogisticRegression(max_iter=500)),
            ]
        ),
        Y_CLASS,
    ),
    "every column flagged (features='all') + robust scaler without centering + forest": (
        lambda: Pipeline(
            [
                (
                    "p",
                    ct(
                        impute_then(OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)),
                        make_pipeline(
                            SimpleImputer(add_indicator=True, keep_empty_features=False),
                            RobustScaler(with_centering=False),
                        ),
                    ),
                ),
                ("m", RandomForestRegressor(n_estimators=10, random_state=0)),
            ]
        ),
        Y_REG,
    ),
    "one-hot with infrequent categories (min_frequency), unseen ones among them + logistic": (
        lambda: Pipeline(
            [
                ("p", ct(impute_then(OneHotEncoder(min_frequency=60, handle_unknown="infrequent_if_exist")))),
                ("m", LogisticRegression()),
            ]
        ),
        Y_CLASS,
    ),
    "one-hot keeping two categories (max_categories), unseen ones ignored, NaN a category + forest": (
        lambda: Pipeline(
            [
                ("p", ct(OneHotEncoder(max_categories=2, handle_unknown="ignore", sparse_output=False))),
                ("m", RandomForestClassifier(n_estimators=10, random_state=0)),
            ]
        ),
        Y_THREE,
    ),
    "one-hot with infrequent categories and drop='first', unseen ones among them + logistic": (
        lambda: Pipeline(
            [
                (
                    "p",
                    ct(
                        impute_then(OneHotEncoder(max_categories=2, drop="first", handle_unknown="infrequent_if_exist"))
                    ),
                ),
                ("m", LogisticRegression()),
            ]
        ),
        Y_CLASS,
    ),
    "one-hot keeping two categories and dropping one if binary, NaN a category + forest": (
        lambda: Pipeline(
            [
                ("p", ct(OneHotEncoder(max_categories=2, drop="if_binary", handle_unknown="ignore"))),
                ("m", RandomForestClassifier(n_estimators=10, random_state=0)),
            ]
        ),
        Y_THREE,
    ),
    "ordinal with infrequent categories (min_frequency), NaN a category, unseen ones -1 + forest": (
        lambda: Pipeline(
            [
                ("p", ct(OrdinalEncoder(min_frequency=60, handle_unknown="use_encoded_value", unknown_value=-1))),
                ("m", RandomForestClassifier(n_estimators=10, random_state=0)),
            ]
        ),
        Y_CLASS,
    ),
    "ordinal keeping two categories (max_categories), NaN encoded -2, unseen ones -1 + gradient boosting": (
        lambda: Pipeline(
            [
                (
                    "p",
                    ct(
                        OrdinalEncoder(
                            max_categories=2,
                            handle_unknown="use_encoded_value",
                            unknown_value=-1,
                            encoded_missing_value=-2,
                        )
                    ),
                ),
                ("m", GradientBoostingRegressor(n_estimators=10, random_state=0)),
            ]
        ),
        Y_REG,
    ),
    "polynomial features (degree 2) of the scaled numbers + ridge": (
        lambda: Pipeline(
            [("p", ct(impute_then(OneHotEncoder(handle_unknown="ignore")), poly_numbers(2))), ("m", Ridge())]
        ),
        Y_REG,
    ),
    "polynomial features (degree 3, no bias) of every encoded column + logistic (three classes)": (
        lambda: Pipeline(
            [
                ("p", ct(impute_then(OneHotEncoder(handle_unknown="ignore", sparse_output=False)))),
                ("poly", PolynomialFeatures(degree=3, include_bias=False)),
                ("m", LogisticRegression(max_iter=2000)),
            ]
        ),
        Y_THREE,
    ),
    "scaler without mean + k-means": (
        lambda: Pipeline(
            [
                (
                    "p",
                    ct(
                        impute_then(OneHotEncoder(handle_unknown="ignore")),
                        make_pipeline(SimpleImputer(), StandardScaler(with_mean=False)),
                    ),
                ),
                ("m", KMeans(n_clusters=3, n_init=2, random_state=0)),
            ]
        ),
        None,
    ),
}


def methods_of(runner) -> tuple[str, ...]:
    """The outputs that are the estimator's own methods (explanations are tested in test_explain.py)."""
    return tuple(name for name in runner.outputs if name in MODEL_METHODS)


def runner_for(model, sample):
    signature, _ = package.signature_of(model, sample)
    return ModelRunner(model, signature), signature


def batch_from(frame: pd.DataFrame, signature) -> Batch:
    return package.batch_of(frame, signature)


def assert_equal(got, expected):
    expected = np.asarray(expected.toarray() if hasattr(expected, "toarray") else expected)
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    else:
        assert np.asarray(got).tolist() == expected.tolist()


@pytest.mark.parametrize("name", list(PIPELINES))
def test_compiled_pipelines_are_used_and_answer_as_scikit_learn(name):
    make, y = PIPELINES[name]
    model = make().fit(X, y) if y is not None else make().fit(X)
    runner, signature = runner_for(model, X)
    assert runner.description.path.startswith("compiled preprocessing"), runner.description.path
    fresh = data()
    unseen = fresh.head(3).copy()
    unseen.loc[unseen.index[1], "shape"] = "triangle"
    for rows in (fresh, fresh.head(1), fresh.iloc[[5]], unseen):
        try:
            expected = {output: getattr(model, output)(rows) for output in methods_of(runner)}
        except ValueError:  # an encoder with handle_unknown="error": ours refuses the same rows, naming the column
            with pytest.raises(Unprocessable, match="column 'shape' has value"):
                runner.run(batch_from(rows, signature), methods_of(runner))
            continue
        answers = runner.run(batch_from(rows, signature), methods_of(runner))
        for output, values in answers.items():
            assert_equal(values, expected[output])


def test_compiled_forests_sum_trees_bit_for_bit():
    numeric = X[["weight", "age"]].fillna(0).to_numpy()
    for model, y in (
        (RandomForestClassifier(n_estimators=30, random_state=1), Y_THREE),
        (ExtraTreesRegressor(n_estimators=30, random_state=1), Y_REG),
    ):
        model.fit(numeric, y)
        runner, _signature = runner_for(model, pd.DataFrame(numeric, columns=["weight", "age"]))
        assert runner.description.path == f"compiled {type(model).__name__}"
        # 64 rows take the level-by-level walk, 300 the per-tree Cython calls: both sklearn's sums exactly.
        for count in (1, 64, 300):
            rows = np.random.default_rng(count).normal([50, 15], [20, 10], size=(count, 2))
            batch = Batch(rows=count, matrix=rows)
            for output, values in runner.run(batch, methods_of(runner)).items():
                assert np.array_equal(values, getattr(model, output)(rows)), output


def test_compiled_forests_send_missing_values_where_each_node_says():
    rng = np.random.default_rng(4)
    numbers = rng.normal(size=(300, 3))
    numbers[rng.random((300, 3)) < 0.15] = np.nan
    model = RandomForestClassifier(n_estimators=25, random_state=0).fit(numbers, np.nan_to_num(numbers[:, 0]) > 0)
    frame = pd.DataFrame(numbers, columns=["a", "b", "c"])
    runner, _ = runner_for(model, frame)
    assert runner.description.path == "compiled RandomForestClassifier"
    rows = rng.normal(size=(50, 3))
    rows[rng.random((50, 3)) < 0.3] = np.nan
    answers = runner.run(Batch(rows=50, matrix=rows), ("predict_proba",))
    assert np.array_equal(answers["predict_proba"], model.predict_proba(rows))


def test_an_unseen_category_the_encoder_refuses_names_the_column_on_the_compiled_path():
    model = Pipeline([("p", ct(impute_then(OneHotEncoder()))), ("m", LogisticRegression())]).fit(X, Y_CLASS)
    runner, signature = runner_for(model, X)
    assert runner.description.path.startswith("compiled preprocessing")
    rows = X.head(2).copy()
    rows.loc[1, "shape"] = "triangle"
    with pytest.raises(Unprocessable, match=r"column 'shape' has value\(s\) 'triangle' the model was not trained on"):
        runner.run(batch_from(rows, signature), ("predict",))


@pytest.mark.parametrize(
    "encoder",
    [
        OneHotEncoder(handle_unknown="ignore", dtype=np.int32, sparse_output=False),
        make_pipeline(FunctionTransformer(lambda block: block), OneHotEncoder(handle_unknown="ignore")),
    ],
    ids=["an encoder with an integer dtype", "a function that is not a numpy ufunc"],
)
def test_options_not_rebuilt_keep_scikit_learns_path(encoder):
    x = X.fillna({"shade": "mid"})
    model = Pipeline([("p", ct(encoder)), ("m", LogisticRegression())]).fit(x, Y_CLASS)
    runner, signature = runner_for(model, x)
    assert runner.description.path == "model methods on a DataFrame"
    answers = runner.run(batch_from(x.head(5), signature), ("predict_proba",))
    assert_equal(answers["predict_proba"], model.predict_proba(x.head(5)))


def test_the_proof_refuses_a_plan_that_is_off_by_a_little():
    model = Pipeline([("p", ct(impute_then(OneHotEncoder(handle_unknown="ignore")))), ("m", LogisticRegression())])
    model.fit(X, Y_CLASS)
    signature, _ = package.signature_of(model, X)
    candidate = compiled.plan(model, signature, ("predict_proba",))
    reference = compiled.Plan(ModelRunner(model, signature).codec.encode, {"predict_proba": model.predict_proba}, "")
    batches = compiled.probe_batches(signature)
    assert compiled.prove(candidate, reference, batches) is None
    skewed = compiled.Plan(candidate.encode, {"predict_proba": lambda m: model[-1].predict_proba(m) * (1 + 1e-7)}, "")
    assert compiled.prove(skewed, reference, batches) == "probe batch 0: predict_proba differs"
    lenient = compiled.Plan(
        lambda b: candidate.encode(b), {"predict_proba": lambda m: model[-1].predict_proba(np.nan_to_num(m))}, ""
    )
    refusing = compiled.Plan(reference.encode, {"predict_proba": lambda m: (_ for _ in ()).throw(ValueError("no"))}, "")
    assert "scikit-learn answered, compiled refused (client)" in compiled.prove(refusing, reference, batches)
    assert compiled.prove(lenient, reference, batches) is None


def test_compiled_paths_can_be_switched_off(penguins_dir):
    from model_server.transport.app import create_app

    from .conftest import make_settings

    for flag, prefix in (("true", "compiled preprocessing"), ("false", "model methods on a DataFrame")):
        app = create_app(make_settings(penguins_dir, MODEL_SERVER_COMPILED=flag))
        runner = app.extensions["model_server"].served.runner
        assert runner.description.path.startswith(prefix)


def test_forests_fitted_on_a_dataframe_take_the_compiled_path_and_answer_as_scikit_learn():
    frame = X[["weight", "age"]].fillna(0)
    for model, y in (
        (RandomForestClassifier(n_estimators=20, random_state=1), Y_THREE),
        (ExtraTreesRegressor(n_estimators=20, random_state=1), Y_REG),
    ):
        model.fit(frame, y)  # as users fit them: the estimator keeps the column names
        runner, signature = runner_for(model, frame)
        assert runner.description.path == f"compiled {type(model).__name__}"
        rows = frame.sample(40, random_state=3)
        for output, values in runner.run(batch_from(rows, signature), methods_of(runner)).items():
            assert np.array_equal(values, getattr(model, output)(rows)), output


def test_gradient_boosting_fitted_on_a_dataframe_is_compiled_and_answers_bit_for_bit():
    rng = np.random.default_rng(12)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    score = frame["a"] + frame["b"] ** 2
    for model in (
        GradientBoostingRegressor(n_estimators=40, random_state=0).fit(frame, score),
        GradientBoostingRegressor(loss="quantile", alpha=0.9, n_estimators=20, random_state=0).fit(frame, score),
        GradientBoostingClassifier(n_estimators=30, random_state=0).fit(frame, score > 1),
        GradientBoostingClassifier(loss="exponential", n_estimators=20, random_state=0).fit(frame, score > 1),
        GradientBoostingClassifier(n_estimators=15, random_state=0).fit(frame, np.digitize(score, [0, 1, 3])),
    ):
        runner, signature = runner_for(model, frame)
        assert runner.description.path == f"compiled {type(model).__name__}"
        # 1 and 40 rows take the level-by-level walk, 300 each tree's own apply: both sklearn's sums exactly
        for count in (1, 40, 300):
            rows = pd.DataFrame(rng.normal(size=(count, 3)) * 2, columns=frame.columns)
            for output, values in runner.run(batch_from(rows, signature), methods_of(runner)).items():
                assert np.array_equal(values, getattr(model, output)(rows)), (type(model).__name__, output, count)


def test_compiled_gradient_boosting_routes_nan_and_infinity_as_scikit_learn_does_when_serving():
    # The server turns scikit-learn's input check off (assume_finite): its tree loop then sends NaN and infinity
    # right at every split, and the compiled plan must do the same, not refuse them.
    rng = np.random.default_rng(13)
    numbers = rng.normal(size=(200, 2))
    model = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(numbers, numbers[:, 0] > 0)
    methods = compiled.gradient_boosting_methods(model)
    rows = np.repeat(numbers[:4], 50, axis=0)  # 200 rows: each tree's own apply; 4: the level walk
    rows[::3, 0] = np.nan
    rows[1::3, 1] = np.inf
    rows[2::5, 1] = 1e39  # infinite in the float32 both compare in
    with sklearn.config_context(assume_finite=True), np.errstate(over="ignore"):
        for batch in (rows, rows[:4]):
            for name, method in methods.items():
                assert np.array_equal(method(batch), getattr(model, name)(batch)), name


def test_gradient_boosting_from_an_estimator_of_its_own_keeps_scikit_learns_path():
    frame = X[["weight", "age"]].fillna(0)
    model = GradientBoostingRegressor(init=Ridge(), n_estimators=10).fit(frame, Y_REG)
    with pytest.raises(compiled.NotCompilable, match="started from Ridge"):
        compiled.gradient_boosting_methods(model)
    runner, signature = runner_for(model, frame)
    assert not runner.description.path.startswith("compiled"), runner.description.path
    rows = frame.head(5)
    assert np.array_equal(runner.run(batch_from(rows, signature), ("predict",))["predict"], model.predict(rows))


def _hist_gradient_boosting_cases():
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    rng = np.random.default_rng(8)
    numbers = rng.normal(size=(400, 4))
    numbers[rng.random(numbers.shape) < 0.1] = np.nan
    numbers[:, 3] = rng.integers(0, 5, 400)
    numbers[rng.random(400) < 0.1, 3] = np.nan
    score = np.nan_to_num(numbers[:, 0]) + np.isin(numbers[:, 3], [1, 3])
    frame = pd.DataFrame(numbers, columns=["a", "b", "c", "plan"])
    return frame, [
        HistGradientBoostingRegressor(max_iter=40).fit(frame, score),
        HistGradientBoostingClassifier(max_iter=40).fit(frame, score > 0.5),
        HistGradientBoostingClassifier(max_iter=20).fit(frame, np.digitize(score, [0, 1])),
        HistGradientBoostingClassifier(max_iter=30, categorical_features=["plan"]).fit(frame, score > 0.5),
    ]


def test_hist_gradient_boosting_is_compiled_and_answers_as_scikit_learn_bit_for_bit():
    frame, models = _hist_gradient_boosting_cases()
    rng = np.random.default_rng(9)
    for model in models:
        runner, signature = runner_for(model, frame)
        assert runner.description.path == f"compiled {type(model).__name__}"
        # 5 rows and 40 take the level-by-level walk, 300 each predictor's own Cython: both sklearn's sums
        for count in (5, 40, 300):
            rows = pd.DataFrame(rng.normal(size=(count, 4)), columns=frame.columns)
            rows[rng.random(rows.shape) < 0.2] = np.nan
            rows["plan"] = rng.integers(-1, 8, count).astype(float)  # unknown and negative codes too
            rows.loc[rng.random(count) < 0.1, "plan"] = np.nan
            for output, values in runner.run(batch_from(rows, signature), methods_of(runner)).items():
                assert np.array_equal(values, getattr(model, output)(rows)), (type(model).__name__, output, count)
