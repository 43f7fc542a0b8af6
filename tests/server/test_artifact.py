import json
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn
from model_server import train
from model_server.core import artifact
from model_server.errors import ArtifactError


@pytest.fixture
def copy(artifact_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    target.mkdir()
    for item in artifact_dir.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def rewrite_metadata(directory: Path, **changes) -> None:
    path = directory / artifact.METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


DIABETES_COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def write_metadata(directory: Path, model_file: str, fmt: str) -> None:
    """Valid schema-1 metadata (what the first releases wrote) for whatever model file a test planted."""
    metadata = {
        "schema_version": 1,
        "name": "diabetes",
        "version": "1",
        "feature_names": DIABETES_COLUMNS,
        "n_features": 10,
        "target": "progression",
        "format": fmt,
        "model_file": model_file,
        "model_sha256": artifact.sha256_file(directory / model_file),
        "sklearn_version": sklearn.__version__,
    }
    (directory / artifact.METADATA_FILE).write_text(json.dumps(metadata))


def test_training_is_deterministic_and_reports_held_out_metrics():
    model_a, meta_a = train.train()
    model_b, meta_b = train.train()
    np.testing.assert_array_equal(model_a.coef_, model_b.coef_)
    assert meta_a["metrics"] == meta_b["metrics"]
    assert meta_a["training_data"]["fingerprint"] == meta_b["training_data"]["fingerprint"]
    assert meta_a["metrics"]["test_rows"] == 89
    assert 0.3 < meta_a["metrics"]["r2"] < 0.7


def test_saved_artifact_round_trips_with_full_metadata(artifact_dir: Path):
    loaded = artifact.load(artifact_dir)
    meta = loaded.metadata
    for key in (*artifact.REQUIRED_KEYS[2], "metrics", "training_data", "created_at"):
        assert key in meta
    assert meta["model_sha256"] == artifact.sha256_file(artifact_dir / "model.skops")
    assert meta["sklearn_version"] == sklearn.__version__
    assert meta["schema_version"] == 2
    assert loaded.signature.names[:3] == ("age", "sex", "bmi")
    assert {c.datatype for c in loaded.signature.columns} == {"FP64"}
    assert [o["name"] for o in meta["outputs"]] == ["predict", "contributions", "baseline"]


def test_save_replaces_an_existing_directory_atomically(artifact_dir: Path, tmp_path: Path):
    model, metadata = train.train(version="2")
    target = tmp_path / "model"
    artifact.save(model, {**metadata, "version": "1"}, target)
    artifact.save(model, metadata, target)
    assert artifact.load(target).version == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_missing_directory_is_refused(tmp_path: Path):
    with pytest.raises(ArtifactError, match="does not exist"):
        artifact.load(tmp_path / "nope")


def test_missing_metadata_is_refused(copy: Path):
    (copy / "metadata.json").unlink()
    with pytest.raises(ArtifactError, match=r"metadata\.json is missing"):
        artifact.load(copy)


def test_sha256_mismatch_is_refused(copy: Path):
    with (copy / "model.skops").open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        artifact.load(copy)


def test_truncated_model_with_matching_checksum_is_refused(copy: Path):
    model_file = copy / "model.skops"
    model_file.write_bytes(model_file.read_bytes()[:100])
    rewrite_metadata(copy, model_sha256=artifact.sha256_file(model_file))
    with pytest.raises(ArtifactError, match="not a readable skops file"):
        artifact.load(copy)


def test_other_sklearn_version_is_refused(copy: Path):
    rewrite_metadata(copy, sklearn_version="0.24.2")
    with pytest.raises(ArtifactError, match=r"trained with scikit-learn 0\.24\.2"):
        artifact.load(copy)


def test_metadata_lacking_keys_is_refused(copy: Path):
    (copy / "metadata.json").write_text('{"schema_version": 2, "name": "x"}')
    with pytest.raises(ArtifactError, match=r"lacks version, format, .*inputs, outputs"):
        artifact.load(copy)


def test_metadata_of_an_unknown_schema_is_refused(copy: Path):
    rewrite_metadata(copy, schema_version=9)
    with pytest.raises(ArtifactError, match=r"schema_version 9 is not one this server reads"):
        artifact.load(copy)


def test_not_json_metadata_is_refused(copy: Path):
    (copy / "metadata.json").write_text("{nope")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifact.load(copy)


def test_object_without_predict_is_refused(tmp_path: Path):
    import skops.io

    target = tmp_path / "model"
    target.mkdir()
    skops.io.dump({"coef": [1, 2]}, target / "model.skops")
    write_metadata(target, "model.skops", "skops")
    with pytest.raises(ArtifactError, match="has none of predict"):
        artifact.load(target)


class Exploit:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _pickle_artifact(directory: Path, marker: Path) -> None:
    directory.mkdir()
    (directory / "model.joblib").write_bytes(pickle.dumps(Exploit(str(marker))))
    write_metadata(directory, "model.joblib", "joblib")


def test_malicious_pickle_artifact_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"
    _pickle_artifact(tmp_path / "model", marker)
    with pytest.raises(ArtifactError, match="pickle-based artifact"):
        artifact.load(tmp_path / "model")
    assert not marker.exists()


def test_skops_file_referencing_an_untrusted_callable_is_refused(tmp_path: Path):
    # A classic skops attack: a transformer whose function is os.system. Loading must stop at the type check.
    import os

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    target = tmp_path / "model"
    target.mkdir()
    skops.io.dump(FunctionTransformer(func=os.system), target / "model.skops")
    write_metadata(target, "model.skops", "skops")
    with pytest.raises(ArtifactError, match=r"not trusted: .*system"):
        artifact.load(target)


def test_trusted_pickle_loads_only_when_switched_on(tmp_path: Path):
    model, metadata = train.train()
    target = tmp_path / "model"
    artifact.save(model, metadata, target, fmt="joblib")
    with pytest.raises(ArtifactError, match="MODEL_SERVER_TRUST_PICKLE"):
        artifact.load(target)
    loaded = artifact.load(target, trust_pickle=True)
    np.testing.assert_allclose(loaded.model.coef_, joblib.load(target / "model.joblib").coef_)


def test_linear_fast_path_is_used_and_equals_predict_bit_for_bit(artifact_dir: Path):
    from model_server.core.runner import linear_fast_predictor

    loaded = artifact.load(artifact_dir)
    fast = linear_fast_predictor(loaded.model, 10)
    assert fast is not None
    rows = np.random.default_rng(7).normal(size=(1000, 10))
    assert np.array_equal(fast(rows), loaded.model.predict(rows))


def test_non_linear_models_keep_model_predict():
    from model_server.core.runner import linear_fast_predictor

    model, _ = train.train("diabetes", "random-forest", trees=5)
    assert linear_fast_predictor(model, 10) is None


def test_schema_1_artifacts_still_load_as_numeric_columns(tmp_path: Path):
    import skops.io

    model, _ = train.train()
    target = tmp_path / "model"
    target.mkdir()
    skops.io.dump(model, target / "model.skops")
    write_metadata(target, "model.skops", "skops")
    loaded = artifact.load(target)
    assert loaded.signature.names == tuple(DIABETES_COLUMNS)
    assert not loaded.signature.frame
    assert loaded.signature.numeric


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        (artifact.Expectations(version="2"), r"is version '1'; this deployment expects '2'"),
        (artifact.Expectations(sha256="0" * 64), r"has sha256 [0-9a-f]{64}; this deployment expects 0{64}"),
    ],
)
def test_an_artifact_other_than_the_pinned_one_is_refused(artifact_dir: Path, expect, message):
    with pytest.raises(ArtifactError, match=message):
        artifact.load(artifact_dir, expect=expect)


def test_the_pinned_version_and_sha256_load(artifact_dir: Path):
    sha = json.loads((artifact_dir / "metadata.json").read_text())["model_sha256"]
    assert artifact.load(artifact_dir, expect=artifact.Expectations("1", sha)).version == "1"


def test_a_partial_of_an_untrusted_function_is_refused(tmp_path: Path):
    # functools.partial is trusted only because the function inside is checked too.
    import functools
    import os

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    target = tmp_path / "model"
    target.mkdir()
    skops.io.dump(FunctionTransformer(func=functools.partial(os.system, "true")), target / "model.skops")
    write_metadata(target, "model.skops", "skops")
    with pytest.raises(ArtifactError, match=r"not trusted: .*system"):
        artifact.load(target)


def test_operators_can_trust_more_types_but_the_artifact_cannot(tmp_path: Path):
    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    target = tmp_path / "model"
    target.mkdir()
    skops.io.dump(FunctionTransformer(func=np.clip), target / "model.skops")
    write_metadata(target, "model.skops", "skops")
    metadata = json.loads((target / "metadata.json").read_text())
    metadata["trusted_types"] = ["numpy.clip"]  # ignored: trust never comes from the artifact
    (target / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ArtifactError, match=r"not trusted: numpy\.clip .*MODEL_SERVER_TRUSTED_TYPES"):
        artifact.load(target)
    assert artifact.load(target, trusted_types=("numpy.clip",)).model.func is np.clip
