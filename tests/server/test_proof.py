"""Recorded proofs (core/proof.py): taken only for exactly the artifact, code and libraries they were made for."""

from __future__ import annotations

import json

import pytest
from model_server import train
from model_server.core import artifact, compiled, explain, proof
from model_server.core.model import ModelHolder

from .conftest import make_settings


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    """The penguin forest pipeline, saved twice: with its proofs recorded and without."""
    model, metadata = train.train("penguins", "random-forest", trees=10)
    root = tmp_path_factory.mktemp("proof")
    artifact.save(model, metadata, root / "proved", prove=True)
    artifact.save(model, metadata, root / "plain")
    return root


def load(directory, monkeypatch, *, proving_allowed: bool) -> ModelHolder:
    """A loaded holder; ``proving_allowed=False`` makes any load-time proof fail the test."""
    calls = {"prove": 0, "check": 0}
    prove, check = compiled.prove, explain.Explainer.check

    def counted_prove(*args, **kwargs):
        calls["prove"] += 1
        return prove(*args, **kwargs)

    def counted_check(self, *args, **kwargs):
        calls["check"] += 1
        return check(self, *args, **kwargs)

    monkeypatch.setattr(compiled, "prove", counted_prove)
    monkeypatch.setattr(explain.Explainer, "check", counted_check)
    holder = ModelHolder(make_settings(directory))
    assert holder.load(), holder.error
    if proving_allowed:
        assert calls == {"prove": 1, "check": 1}, calls
    else:
        assert calls == {"prove": 0, "check": 0}, calls
    return holder


def test_a_recorded_proof_is_taken_and_serves_what_proving_would(forest, monkeypatch):
    metadata = json.loads((forest / "proved" / "metadata.json").read_text())
    assert metadata["proof"]["path"] == "compiled preprocessing + compiled RandomForestClassifier"
    assert metadata["proof"]["unexplained"] == ""
    taken = load(forest / "proved", monkeypatch, proving_allowed=False).served
    proved = load(forest / "plain", monkeypatch, proving_allowed=True).served
    assert taken is not None
    assert proved is not None
    assert taken.runner.description == proved.runner.description
    assert taken.runner.explainer is not None
    batch = taken.runner.example_batch(3)
    names = ("predict", "predict_proba", explain.CONTRIBUTIONS, explain.BASELINE)
    got, expected = taken.runner.run(batch, names), proved.runner.run(batch, names)
    for name in names:
        assert got[name].tolist() == expected[name].tolist(), name


@pytest.mark.parametrize(
    "tamper",
    [
        "another model file",
        "another signature",
        "another server or library",
        "a proof that is not an object",
        "a proof with a field missing",
    ],
)
def test_a_proof_made_for_anything_else_is_ignored_and_the_server_proves_at_load(tamper, forest, monkeypatch, tmp_path):
    import shutil

    directory = tmp_path / "model"
    shutil.copytree(forest / "proved", directory)
    path = directory / "metadata.json"
    metadata = json.loads(path.read_text())
    if tamper == "another model file":  # the same model, dumped again: other bytes, another sha256
        assert proof.recorded(metadata) is not None
        model = artifact.load(directory).model
        artifact.save(model, {k: v for k, v in metadata.items() if k != "proof"}, tmp_path / "again")
        again = json.loads((tmp_path / "again" / "metadata.json").read_text())
        again["proof"] = metadata["proof"]
        (tmp_path / "again" / "metadata.json").write_text(json.dumps(again))
        directory = tmp_path / "again"
    elif tamper == "another signature":
        metadata["inputs"][0]["example"] = "an example edited by hand"
    elif tamper == "another server or library":
        monkeypatch.setattr(proof, "_code_and_libraries", lambda: "another build")
    elif tamper == "a proof that is not an object":
        metadata["proof"] = ["compiled"]
    else:
        del metadata["proof"]["unexplained"]
    if tamper not in ("another model file", "another server or library"):
        path.write_text(json.dumps(metadata))
    assert proof.recorded(artifact.read_metadata(directory)) is None
    holder = load(directory, monkeypatch, proving_allowed=True)
    assert holder.served is not None
    assert holder.served.runner.description.path.startswith("compiled")


def test_a_proof_that_found_no_plan_is_not_tried_again(monkeypatch, tmp_path):
    model, metadata = train.train("penguins", "random-forest", trees=5)
    artifact.save(model, metadata, tmp_path / "model", prove=True)
    path = tmp_path / "model" / "metadata.json"
    saved = json.loads(path.read_text())
    saved["proof"]["path"] = "model methods on a DataFrame"  # as packaging records a plan that disagreed
    saved["proof"]["unexplained"] = "Pipeline is served by scikit-learn's own path"
    path.write_text(json.dumps(saved))

    def no_plan(*args, **kwargs):
        raise AssertionError("a plan was built although the proof says none is used")

    monkeypatch.setattr(compiled, "plan", no_plan)
    holder = ModelHolder(make_settings(tmp_path / "model"))
    assert holder.load(), holder.error
    assert holder.served is not None
    assert holder.served.runner.description.path == "model methods on a DataFrame"
    assert holder.served.runner.unexplained == "Pipeline is served by scikit-learn's own path"
