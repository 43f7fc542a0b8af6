"""Every scikit-learn family a team serves, fitted here, packaged, and served through both protocols.

Each case fits a model on a small frame with the kinds of columns real data has (strings, numbers
with gaps, whole numbers, booleans), packages it with the packager's own code, loads it as the
server does, and checks that V1 and V2 answer exactly what the model itself answers, typed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from model_server import package
from model_server.config import MODEL_METHODS
from model_server.core import artifact
from model_server.transport.app import create_app

from .conftest import make_settings

RNG = np.random.default_rng(3)
N = 120


def frame(with_gaps: bool = True) -> pd.DataFrame:
    data = pd.DataFrame(
        {
            "colour": RNG.choice(["red", "green", "blue"], N),
            "size": RNG.normal(10, 3, N),
            "count": RNG.integers(0, 20, N),
            "shiny": RNG.random(N) > 0.5,
        }
    )
    if with_gaps:
        data.loc[::7, "size"] = np.nan
        data.loc[3::11, "colour"] = np.nan
    return data


def preprocess(ordinal: bool = False) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    encoder = (
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
        if ordinal
        else OneHotEncoder(handle_unknown="ignore")
    )
    return ColumnTransformer(
        [
            ("strings", make_pipeline(SimpleImputer(strategy="most_frequent"), encoder), ["colour"]),
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["size", "count"]),
            ("flags", "passthrough", ["shiny"]),
        ]
    )


def target(x: pd.DataFrame, kind: str) -> Any:
    score = x["size"].fillna(10).to_numpy() + (x["colour"] == "red") * 3 + x["count"] * 0.2
    if kind == "regression":
        return score
    if kind == "two outputs":
        return np.column_stack([score, -score])
    high = score > np.median(score)
    return {
        "strings": np.where(high, "yes", "no"),
        "ints": high.astype(int) + (score > np.percentile(score, 80)),
        "bools": high,
    }[kind]


def pipeline(final: Any, ordinal: bool = False) -> Any:
    from sklearn.pipeline import Pipeline

    return Pipeline([("prepare", preprocess(ordinal)), ("model", final)])


def case(name: str, make: Callable[[], Any], labels: str | None, with_gaps: bool = True, category: bool = False):
    return pytest.param(make, labels, with_gaps, category, id=name)


def _logistic():
    from sklearn.linear_model import LogisticRegression

    return pipeline(LogisticRegression(max_iter=500))


def _forest_classifier():
    from sklearn.ensemble import RandomForestClassifier

    return pipeline(RandomForestClassifier(n_estimators=10, random_state=0), ordinal=True)


def _ridge():
    from sklearn.linear_model import Ridge

    return pipeline(Ridge())


def _two_output_regressor():
    from sklearn.linear_model import LinearRegression

    return pipeline(LinearRegression())


def _hist_gradient_boosting():
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=20, random_state=0)


def _kmeans():
    from sklearn.cluster import KMeans

    return pipeline(KMeans(n_clusters=3, n_init=2, random_state=0))


def _isolation_forest():
    from sklearn.ensemble import IsolationForest

    return pipeline(IsolationForest(n_estimators=20, random_state=0), ordinal=True)


def _numeric_svc():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(random_state=0), ensemble=False))


FAMILIES = [
    case("logistic pipeline, string labels", _logistic, "strings"),
    case("logistic pipeline, int labels", _logistic, "ints"),
    case("logistic pipeline, bool labels", _logistic, "bools"),
    case("random forest, ordinal encoder", _forest_classifier, "strings"),
    case("ridge regressor pipeline", _ridge, "regression"),
    case("two-output regressor", _two_output_regressor, "two outputs"),
    case("hist gradient boosting, native categories", _hist_gradient_boosting, "strings", category=True),
    case("k-means clusterer", _kmeans, None),
    case("isolation forest outlier detector", _isolation_forest, None),
    case("svc on numeric arrays", _numeric_svc, "ints", with_gaps=False),
]
EXPECTED_OUTPUTS = {
    "logistic pipeline, string labels": {"predict", "predict_proba", "decision_function"},
    "k-means clusterer": {"predict", "transform"},
    "isolation forest outlier detector": {"predict", "decision_function", "score_samples"},
    "ridge regressor pipeline": {"predict"},
}


def fit_and_package(make, labels, with_gaps, category, tmp_path: Path, numpy_input: bool = False, **describe):
    x = frame(with_gaps)
    if category:
        x = x.astype({"colour": "category"})
    model = make()
    numeric = numpy_input or not with_gaps
    fit_x = x[["size", "count"]].to_numpy() if numeric else x
    sample = x[["size", "count"]] if numeric else x
    y = target(x, labels) if labels else None
    model.fit(fit_x, y) if y is not None else model.fit(fit_x)
    metadata = package.describe(
        model, sample, name="m", version="1", target=None, training_data={"source": "test"}, **describe
    )
    directory = tmp_path / "model"
    artifact.save(model, metadata, directory)
    return model, fit_x, sample, directory


def served_client(directory: Path, **settings: str):
    return create_app(make_settings(directory, **settings)).test_client()


def v2_columns(sample: pd.DataFrame, metadata: dict) -> list[dict]:
    out = []
    for column in metadata["inputs"]:
        values = sample[column["name"]].astype(object).where(sample[column["name"]].notna(), None).tolist()
        out.append({"name": column["name"], "shape": [len(values)], "datatype": column["datatype"], "data": values})
    return out


def as_plain(values: Any) -> Any:
    """The model's own answer, as JSON would carry it."""
    return orjson.loads(orjson.dumps(np.asarray(values).tolist()))


@pytest.mark.parametrize(("make", "labels", "with_gaps", "category"), FAMILIES)
def test_each_family_answers_both_protocols_exactly_as_the_model_does(
    request, make, labels, with_gaps, category, tmp_path
):
    model, fit_x, sample, directory = fit_and_package(make, labels, with_gaps, category, tmp_path)
    client = served_client(directory)
    meta = client.get("/v2/models/m").get_json()
    outputs = {o["name"]: o for o in meta["outputs"] if o["name"] in MODEL_METHODS}
    expected_names = EXPECTED_OUTPUTS.get(request.node.callspec.id)
    if expected_names:
        assert set(outputs) == expected_names
    rows = sample.head(25)
    model_rows = fit_x[:25] if isinstance(fit_x, np.ndarray) else fit_x.head(25)
    body = {"inputs": v2_columns(rows, meta), "outputs": [{"name": name} for name in outputs]}
    response = client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 200, response.get_json()
    answered = {o["name"]: o for o in response.get_json()["outputs"]}
    for name, output in outputs.items():
        own = getattr(model, name)(model_rows)
        own = own.toarray() if hasattr(own, "toarray") else np.asarray(own)
        got = answered[name]
        assert got["datatype"] == output["datatype"]
        assert got["shape"] == list(own.shape)
        if output["datatype"] == "FP64":
            np.testing.assert_allclose(np.reshape(got["data"], own.shape), own, rtol=1e-12, atol=1e-12)
        else:
            assert got["data"] == as_plain(own.ravel()), name
    # V1: rows in signature order, nulls where the sample has gaps; predictions follow "predict".
    instances = [[None if pd.isna(v) else v for v in row] for row in rows.astype(object).itertuples(index=False)]
    v1 = client.post("/v1/models/m:predict", json={"instances": instances})
    assert v1.status_code == 200, v1.get_json()
    own_predict = model.predict(model_rows)
    if outputs["predict"]["datatype"] == "FP64":
        np.testing.assert_allclose(np.asarray(v1.get_json()["predictions"]), own_predict, rtol=1e-12)
    else:
        assert v1.get_json()["predictions"] == as_plain(own_predict)


def test_classifier_labels_are_typed_and_listed_in_metadata(tmp_path):
    _, _, _, directory = fit_and_package(_logistic, "bools", True, False, tmp_path)
    meta = served_client(directory).get("/v2/models/m").get_json()
    assert meta["parameters"]["classes"] == [False, True]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["predict"]["datatype"] == "BOOL"
    assert outputs["predict_proba"]["parameters"] == {"classes": [False, True]}
    assert outputs["decision_function"]["parameters"] == {"positive_class": True}
    ints = fit_and_package(_logistic, "ints", True, False, tmp_path / "ints")[3]
    int_meta = served_client(ints).get("/v2/models/m").get_json()
    assert {o["name"]: o["datatype"] for o in int_meta["outputs"]}["predict"] == "INT64"
    assert int_meta["parameters"]["classes"] == [0, 1, 2]


def test_default_outputs_shape_v1_and_v2_answers(tmp_path):
    model, fit_x, sample, directory = fit_and_package(_logistic, "strings", True, False, tmp_path)
    client = served_client(directory, MODEL_SERVER_DEFAULT_OUTPUTS="predict_proba,predict")
    rows = sample.head(3)
    instances = [[None if pd.isna(v) else v for v in row] for row in rows.astype(object).itertuples(index=False)]
    v1 = client.post("/v1/models/m:predict", json={"instances": instances}).get_json()
    np.testing.assert_allclose(v1["predictions"], model.predict_proba(fit_x.head(3)), rtol=1e-12)
    meta = client.get("/v2/models/m").get_json()
    v2 = client.post("/v2/models/m/infer", json={"inputs": v2_columns(rows, meta)}).get_json()
    assert [o["name"] for o in v2["outputs"]] == ["predict_proba", "predict"]


def test_a_default_output_the_model_lacks_keeps_it_not_ready_with_the_reason(tmp_path):
    _, _, _, directory = fit_and_package(_ridge, "regression", True, False, tmp_path)
    client = served_client(directory, MODEL_SERVER_DEFAULT_OUTPUTS="predict_proba")
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503
    assert "names predict_proba, which this Pipeline does not answer (it has predict)" in ready.get_json()["error"]


def test_unknown_output_names_the_available_ones(tmp_path):
    _, _, sample, directory = fit_and_package(_kmeans, None, True, False, tmp_path)
    client = served_client(directory)
    meta = client.get("/v2/models/m").get_json()
    body = {"inputs": v2_columns(sample.head(1), meta), "outputs": [{"name": "predict_proba"}]}
    response = client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "unknown output 'predict_proba'; this model has predict, transform"


def test_an_unseen_category_the_model_refuses_is_a_422_naming_the_column(tmp_path):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    x = frame(with_gaps=False)
    model = Pipeline(
        [
            ("prepare", ColumnTransformer([("s", OneHotEncoder(), ["colour"])], remainder="passthrough")),
            ("model", LogisticRegression(max_iter=500)),
        ]
    ).fit(x, target(x, "strings"))
    metadata = package.describe(model, x, name="m", version="1", target=None, training_data={})
    artifact.save(model, metadata, tmp_path / "model")
    client = served_client(tmp_path / "model")
    response = client.post("/v1/models/m:predict", json={"instances": [["purple", 10.0, 3, True]]})
    assert response.status_code == 422
    assert response.get_json()["error"].startswith(
        "column 'colour' has value(s) 'purple' the model was not trained on (known: blue, green, red)"
    )


def test_nulls_are_missing_values_only_where_the_column_is_nullable(tmp_path):
    # 'count' has no gap in the sample; the pipeline imputes it, so by default it is nullable too
    _, _, _, directory = fit_and_package(_logistic, "strings", True, False, tmp_path / "default")
    client = served_client(directory)
    ok = client.post("/v1/models/m:predict", json={"instances": [[None, None, 3, True]]})
    assert ok.status_code == 200
    imputed = client.post("/v1/models/m:predict", json={"instances": [["red", 1.0, None, True]]})
    assert imputed.status_code == 200, imputed.get_json()
    _, _, _, directory = fit_and_package(
        _logistic, "strings", True, False, tmp_path / "strict", not_nullable=("count",)
    )
    refused = served_client(directory).post("/v1/models/m:predict", json={"instances": [["red", 1.0, None, True]]})
    assert refused.status_code == 422
    assert "column 'count' row 0 is null" in refused.get_json()["error"]


def test_a_model_fitted_on_a_dataframe_is_given_one_and_others_a_matrix(tmp_path):
    from model_server.core import codecs

    frame_model = fit_and_package(_logistic, "strings", True, False, tmp_path / "a")[3]
    matrix_model = fit_and_package(_numeric_svc, "ints", False, False, tmp_path / "b")[3]
    for directory, codec in ((frame_model, codecs.FrameCodec), (matrix_model, codecs.MatrixCodec)):
        holder = served_client(directory).application.extensions["model_server"]
        assert isinstance(holder.served.runner.codec, codec)
