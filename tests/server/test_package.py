"""The packager: a model fitted outside this repository becomes a servable artifact, or one clear line says why not."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io
from model_server import package
from model_server.core import artifact
from model_server.transport.app import create_app
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from ..conftest import IMAGE_DIR
from .conftest import make_settings


@pytest.fixture(scope="module")
def penguins_like() -> tuple[Pipeline, pd.DataFrame]:
    rng = np.random.default_rng(1)
    data = pd.DataFrame(
        {
            "island": rng.choice(["Biscoe", "Dream", "Torgersen"], 60),
            "bill_mm": rng.normal(44, 5, 60),
            "sex": rng.choice(["male", "female"], 60),
            "species": rng.choice(["Adelie", "Gentoo"], 60),
        }
    )
    data.loc[::9, "bill_mm"] = np.nan
    data.loc[::13, "sex"] = np.nan
    model = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        (
                            "s",
                            make_pipeline(
                                SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
                            ),
                            ["island", "sex"],
                        ),
                        ("n", SimpleImputer(), ["bill_mm"]),
                    ]
                ),
            ),
            ("classify", LogisticRegression()),
        ]
    ).fit(data.drop(columns="species"), data["species"])
    return model, data


def write(tmp_path: Path, model, data: pd.DataFrame, suffix: str = ".skops") -> tuple[Path, Path]:
    model_path = tmp_path / f"model{suffix}"
    if suffix == ".skops":
        skops.io.dump(model, model_path)
    else:
        joblib.dump(model, model_path)
    sample = tmp_path / "sample.csv"
    data.to_csv(sample, index=False)
    return model_path, sample


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model_server.package", *args],
        cwd=IMAGE_DIR,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def args(model: Path, sample: Path, output: Path, *extra: str) -> list[str]:
    return [
        str(model),
        "--name",
        "penguins",
        "--version",
        "7",
        "--sample",
        str(sample),
        "--output",
        str(output),
        *extra,
    ]


def test_a_pipeline_with_strings_and_gaps_is_packaged_and_served(penguins_like, tmp_path):
    model, data = penguins_like
    model_path, sample = write(tmp_path, model, data)
    done = run(*args(model_path, sample, tmp_path / "out", "--target", "species"))
    metadata = packaged_metadata(done, tmp_path / "out")
    # island has no gap in the sample, but the pipeline imputes it: the model answers without it, so may a client
    assert "inputs: island BYTES?, bill_mm FP64?, sex BYTES?" in done.stdout
    assert metadata["schema_version"] == 2
    assert metadata["task"] == "classification"
    assert metadata["classes"] == ["Adelie", "Gentoo"]
    assert metadata["inputs"][0] == {
        "name": "island",
        "datatype": "BYTES",
        "nullable": True,
        "categories": ["Biscoe", "Dream", "Torgersen"],
        "example": metadata["inputs"][0]["example"],
        "distribution": {
            "categories": ["Biscoe", "Torgersen", "Dream"],  # the sample's shares, most frequent first
            "proportions": [0.4, 0.35, 0.25],
            "other": 0.0,
            "missing": 0.0,
        },
    }
    assert [o["name"] for o in metadata["outputs"]] == [
        "predict",
        "predict_proba",
        "decision_function",
        "contributions",
        "baseline",
    ]
    assert len(metadata["explanation"]["reference"]) == 6  # island and sex one-hot (3 + 2), bill_mm
    assert metadata["metrics"]["sample_rows"] == 60
    assert 0 <= metadata["metrics"]["sample_accuracy"] <= 1
    assert metadata["model_sha256"] == artifact.sha256_file(tmp_path / "out" / "model.skops")
    client = create_app(make_settings(tmp_path / "out")).test_client()
    answer = client.post("/v1/models/penguins:predict", json={"instances": [["Dream", None, None]]})
    assert answer.status_code == 200
    assert (
        answer.get_json()["predictions"]
        == model.predict(pd.DataFrame({"island": ["Dream"], "bill_mm": [np.nan], "sex": [np.nan]})).tolist()
    )


def test_a_trusted_pickle_is_converted_to_skops(penguins_like, tmp_path):
    model, data = penguins_like
    model_path, sample = write(tmp_path, model, data, ".joblib")
    done = run(*args(model_path, sample, tmp_path / "out", "--target", "species", "--trust-pickle"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metadata.json", "model.skops"]


def test_the_signature_follows_the_models_column_order_not_the_csvs(penguins_like, tmp_path):
    model, data = penguins_like
    model_path, sample = write(tmp_path, model, data[["sex", "species", "bill_mm", "island"]])
    assert run(*args(model_path, sample, tmp_path / "out", "--target", "species")).returncode == 0
    inputs = json.loads((tmp_path / "out" / "metadata.json").read_text())["inputs"]
    assert [c["name"] for c in inputs] == ["island", "bill_mm", "sex"]


def existing_output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier artifact")
    return out


def assert_refused_in_one_line(done: subprocess.CompletedProcess, out: Path, message: str) -> None:
    """Bad input: exit 1, one line naming the problem, the earlier artifact left as it was."""
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("package-model: ")
    assert message in lines[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def packaged_metadata(done: subprocess.CompletedProcess, out: Path) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads((out / "metadata.json").read_text())


class Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/package-model-pwned"),))


@pytest.mark.parametrize(
    ("prepare", "extra", "message"),
    [
        (
            lambda m, d, t: write(t, m, d),
            [],
            "columns do not match the columns the model was fitted on (not in the model: "
            "species); the model takes island, bill_mm, sex; if one of them is the label, pass --target",
        ),
        (lambda m, d, t: write(t, m, d.drop(columns="sex")), ["--target", "species"], "(missing sex)"),
        (
            lambda m, d, t: write(t, m, d, ".joblib"),
            ["--target", "species"],
            "is a pickle: loading it runs whatever code",
        ),
        (lambda m, d, t: write(t, m, d, ".txt"), ["--target", "species", "--trust-pickle"], "expected a .skops file"),
        (lambda m, d, t: write(t, m, d), ["--target", "weight"], "--target 'weight' is not a column of"),
        (
            lambda m, d, t: write(t, make_pipeline(FunctionTransformer(np.clip), LinearRegression()), d),
            ["--target", "species"],
            "contains types that are not trusted: numpy.clip",
        ),
        (
            lambda m, d, t: write(t, m, d.assign(bill_mm="long")),
            ["--target", "species"],
            "the model cannot be served on this sample",
        ),
        (
            lambda m, d, t: write(t, m, d.head(0)),
            ["--target", "species"],
            "has a header but no rows",
        ),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(penguins_like, tmp_path, prepare, extra, message):
    model, data = penguins_like
    model_path, sample = prepare(model, data, tmp_path)
    out = existing_output(tmp_path)
    done = run(*args(model_path, sample, out, *extra))
    assert_refused_in_one_line(done, out, message)


def test_a_malicious_pickle_is_not_run_without_trust(tmp_path):
    marker = Path("/tmp/package-model-pwned")
    marker.unlink(missing_ok=True)
    model_path = tmp_path / "model.pkl"
    model_path.write_bytes(pickle.dumps(Exploit()))
    sample = tmp_path / "sample.csv"
    sample.write_text("a\n1\n")
    done = run(*args(model_path, sample, tmp_path / "out"))
    assert done.returncode == 1
    assert not marker.exists()


def test_a_numpy_fitted_model_takes_names_from_the_csv_and_its_width_is_checked(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3))
    model = LinearRegression().fit(x, x @ [1.0, 2.0, 3.0])
    data = pd.DataFrame(x, columns=["a", "b", "c"])
    model_path, sample = write(tmp_path, model, data)
    assert run(*args(model_path, sample, tmp_path / "ok")).returncode == 0
    meta = json.loads((tmp_path / "ok" / "metadata.json").read_text())
    assert ([c["name"] for c in meta["inputs"]], meta["frame"], meta["task"]) == (["a", "b", "c"], False, "regression")
    model_path, sample = write(tmp_path, model, data.assign(d=1.0))
    done = run(*args(model_path, sample, tmp_path / "bad"))
    assert "the model takes 3 features (n_features_in_) but the sample has 4 columns" in done.stderr


def test_column_types_come_from_the_sample():
    columns = {
        name: package.column_of(name, series)
        for name, series in pd.DataFrame(
            {
                "f": [1.5, np.nan, 2.5],
                "i": [1, 2, 3],
                "b": [True, False, True],
                "s": ["x", None, "y"],
            }
        ).items()
    }
    assert [(c.datatype, c.nullable) for c in columns.values()] == [
        ("FP64", True),
        ("INT64", False),
        ("BOOL", False),
        ("BYTES", True),
    ]
    assert columns["s"].categories == ("x", "y")
    with pytest.raises(package.PackageError, match="mixes strings with int"):
        package.column_of("m", pd.Series(["x", 1], dtype=object))
    with pytest.raises(package.PackageError, match="has no values at all"):
        package.column_of("e", pd.Series([np.nan, np.nan]))


def test_a_drift_reference_gives_the_bins_and_a_small_sample_alone_is_warned_about(penguins_like, tmp_path):
    model, data = penguins_like
    model_path, sample = write(tmp_path, model, data)
    alone = run(*args(model_path, sample, tmp_path / "alone", "--target", "species"))
    metadata = packaged_metadata(alone, tmp_path / "alone")
    assert "package-model: warning: the drift reference has 60 rows: 3 bins per column" in alone.stderr
    assert "deciles, which need 220 rows or more (--reference" in alone.stderr
    assert metadata["drift_reference"] == {"rows": 60, "bins_per_column": 3, "noise_floor": 0.0353, "window_rows": 1000}
    extract = tmp_path / "training.csv"
    data.sample(600, replace=True, random_state=0).drop(columns="species").to_csv(extract, index=False)
    done = run(*args(model_path, sample, tmp_path / "out", "--target", "species", "--reference", str(extract)))
    metadata = packaged_metadata(done, tmp_path / "out")
    assert "warning" not in done.stderr
    assert metadata["drift_reference"]["rows"] == 600
    assert metadata["drift_reference"]["bins_per_column"] == 10
    assert metadata["training_data"]["drift_reference"] == "training.csv"
    bill = next(c for c in metadata["inputs"] if c["name"] == "bill_mm")
    assert len(bill["distribution"]["edges"]) >= 6  # quantile bins from 600 rows (gaps take one bin)
    assert bill["nullable"] is True  # the sample still types the columns


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (
            lambda d, t: d.drop(columns=["species", "sex"]).to_csv(t / "ref.csv", index=False),
            "lacks the model's input column(s) sex",
        ),
        (
            lambda d, t: d.assign(bill_mm="long").to_csv(t / "ref.csv", index=False),
            "drift reference column 'bill_mm' holds 'long', not a number",
        ),
        (lambda d, t: d.head(0).to_csv(t / "ref.csv", index=False), "the drift reference has a header but no rows"),
        (lambda d, t: None, "drift reference"),
    ],
    ids=["a column missing", "a word in a number column", "no rows", "no such file"],
)
def test_a_bad_drift_reference_is_one_line_and_nothing_is_written(penguins_like, tmp_path, reference, message):
    model, data = penguins_like
    model_path, sample = write(tmp_path, model, data)
    reference(data, tmp_path)
    out = existing_output(tmp_path)
    done = run(*args(model_path, sample, out, "--target", "species", "--reference", str(tmp_path / "ref.csv")))
    assert_refused_in_one_line(done, out, message)


def test_nullable_comes_from_the_model_and_can_be_overridden(penguins_like, tmp_path):
    model, data = penguins_like
    model_path, sample = write(tmp_path, model, data)
    strict = run(*args(model_path, sample, tmp_path / "strict", "--target", "species", "--not-nullable", "island"))
    assert packaged_metadata(strict, tmp_path / "strict")["inputs"][0]["nullable"] is False
    assert "inputs: island BYTES, bill_mm FP64?" in strict.stdout
    client = create_app(make_settings(tmp_path / "strict")).test_client()
    refused = client.post("/v1/models/penguins:predict", json={"instances": [[None, 40.0, "male"]]})
    assert refused.status_code == 422
    assert "island" in refused.get_json()["error"]
    # the default: the imputer answers for a missing island, and so does the server
    default = run(*args(model_path, sample, tmp_path / "out", "--target", "species"))
    assert packaged_metadata(default, tmp_path / "out")["inputs"][0]["nullable"] is True
    client = create_app(make_settings(tmp_path / "out")).test_client()
    answered = client.post("/v1/models/penguins:predict", json={"instances": [[None, 40.0, "male"]]})
    assert answered.status_code == 200, answered.get_json()
    assert (
        answered.get_json()["predictions"]
        == model.predict(pd.DataFrame({"island": [np.nan], "bill_mm": [40.0], "sex": ["male"]})).tolist()
    )


def test_a_model_that_cannot_take_a_gap_keeps_the_column_strict_and_refuses_nullable(tmp_path):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    model = LinearRegression().fit(frame, frame["a"] * 2 + frame["b"])
    model_path, sample = write(tmp_path, model, frame.assign(y=frame["a"] * 2))
    done = run(*args(model_path, sample, tmp_path / "strict", "--target", "y"))
    assert [c["nullable"] for c in packaged_metadata(done, tmp_path / "strict")["inputs"]] == [False, False]
    assert "inputs: a FP64, b FP64\n" in done.stdout
    out = existing_output(tmp_path)
    refused = run(*args(model_path, sample, out, "--target", "y", "--nullable", "b"))
    assert_refused_in_one_line(refused, out, "--nullable b: the model cannot answer with it missing")
