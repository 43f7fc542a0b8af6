"""The model artifact directory: the contract between training, the image and the chart's model volume.

Layout::

    <dir>/model.skops      the fitted estimator, skops format (no pickle execution on load)
    <dir>/metadata.json    name, version, signature (typed input columns), outputs, task, classes,
                           scikit-learn version, sha256, metrics, training-data summary ...

``save`` writes a new directory atomically (temp dir, then rename); ``load`` verifies the
checksum and the scikit-learn version before any byte of the model is deserialised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sklearn

from ..config import MODEL_METHODS
from ..errors import ArtifactError
from .signature import Signature
from .signature import read as read_signature

log = logging.getLogger("model_server.core.artifact")

METADATA_FILE = "metadata.json"
SKOPS_FILE = "model.skops"
PICKLE_FILE = "model.joblib"
# 2: a typed signature (``inputs``: name, datatype, nullable, categories), ``outputs``, ``task``,
# ``classes``. 1: numeric ``feature_names`` only; still served, as all-FP64 columns.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
COMMON_KEYS = ("schema_version", "name", "version", "format", "model_file", "model_sha256", "sklearn_version")
REQUIRED_KEYS = {
    1: (*COMMON_KEYS, "feature_names", "n_features", "target"),
    2: (*COMMON_KEYS, "inputs", "outputs", "task", "estimator"),
}

# Types a skops file may hold beyond skops' own defaults (which cover scikit-learn's estimators,
# numpy arrays and Python containers): the internals of the families this server is tested with
# (trees and forests, gradient boosting, nearest neighbours, MLPs, calibration, column selectors).
# Anything else is refused unless the operator adds it (MODEL_SERVER_TRUSTED_TYPES), so a tampered
# or foreign artifact cannot make the loader construct arbitrary objects. ``functools.partial`` is
# safe here because the function it wraps is checked against this same list.
TRUSTED_TYPES: tuple[str, ...] = (
    "builtins.object",
    "functools.partial",
    "numpy.dtype",
    "numpy.random._mt19937.MT19937",
    "numpy.random.mtrand.RandomState",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.compose._column_transformer.make_column_selector",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.feature_selection._univariate_selection.chi2",
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._univariate_selection.f_regression",
    "sklearn.metrics._dist_metrics.ChebyshevDistance64",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.tree._tree.Tree",
    "sklearn.utils.validation.check_array",
)


@dataclass(frozen=True)
class Artifact:
    model: Any
    metadata: dict[str, Any]
    signature: Signature

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def version(self) -> str:
        return str(self.metadata["version"])


@dataclass(frozen=True)
class Expectations:
    """What the deployment pins (chart values model.version / model.sha256): anything else is refused."""

    version: str = ""
    sha256: str = ""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(
    model: Any,
    metadata: dict[str, Any],
    directory: Path,
    *,
    fmt: str = "skops",
    verify: Callable[[Path], None] | None = None,
    prove: bool = False,
) -> Path:
    """Write ``model`` and its metadata (schema 2) to ``directory`` atomically; return the metadata path.

    An existing directory is replaced only once the new one is complete and ``verify`` (given the
    written model file) has not raised. With ``prove``, the load-time proofs run now and their answer
    is recorded (proof.py), so that a server with this code and these libraries starts without them.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        if fmt == "skops":
            import skops.io

            model_file = SKOPS_FILE
            skops.io.dump(model, staging / model_file)
        elif fmt == "joblib":
            import joblib

            model_file = PICKLE_FILE
            joblib.dump(model, staging / model_file)
        else:
            raise ValueError(f"unknown artifact format {fmt!r} (expected skops or joblib)")
        if verify is not None:
            verify(staging / model_file)
        full = {
            **metadata,
            "schema_version": SCHEMA_VERSION,
            "format": fmt,
            "model_file": model_file,
            "model_sha256": sha256_file(staging / model_file),
            "sklearn_version": sklearn.__version__,
        }
        if prove:
            full["proof"] = _proof_of(model, full)
        (staging / METADATA_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        # mkdtemp makes 0700; the serving user (not the trainer) must be able to read the artifact.
        os.chmod(staging, 0o755)  # noqa: S103
        backup = None
        if directory.exists():
            backup = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            directory.rename(backup)
        staging.rename(directory)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory / METADATA_FILE


def _proof_of(model: Any, metadata: dict[str, Any]) -> dict[str, str] | None:
    """The proofs' recorded answer; None (a server proves at load) when the model cannot be run as served."""
    from .proof import record

    try:
        return record(model, metadata)
    except Exception as exc:  # the server will say what is wrong when it loads the artifact; saving goes on
        log.info("load-time proofs not recorded: %s: %s", type(exc).__name__, exc)
        return None


def read_metadata(directory: Path) -> dict[str, Any]:
    """Parse and check ``metadata.json``; raise ArtifactError naming what is wrong."""
    path = Path(directory) / METADATA_FILE
    if not Path(directory).is_dir():
        raise ArtifactError(f"model directory {directory} does not exist")
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    schema = metadata.get("schema_version")
    if schema not in READABLE_SCHEMAS:
        raise ArtifactError(f"{path}: schema_version {schema!r} is not one this server reads ({READABLE_SCHEMAS})")
    missing = [key for key in REQUIRED_KEYS[schema] if key not in metadata]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    if schema == 1:
        names = metadata["feature_names"]
        if not (
            isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == metadata["n_features"]
        ):
            raise ArtifactError(f"{path}: feature_names must be n_features strings")
    if metadata["format"] not in ("skops", "joblib"):
        raise ArtifactError(f"{path}: unknown format {metadata['format']!r}")
    return metadata


def load(
    directory: Path,
    *,
    trust_pickle: bool = False,
    trusted_types: tuple[str, ...] = (),
    expect: Expectations = Expectations(),
) -> Artifact:
    """Load and verify the artifact in ``directory``; raise ArtifactError with one clear sentence."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    where = str(directory / METADATA_FILE)
    signature = read_signature(metadata, where)
    if expect.version and str(metadata["version"]) != expect.version:
        raise ArtifactError(
            f"{where} is version {metadata['version']!r}; this deployment expects {expect.version!r} "
            "(MODEL_SERVER_EXPECTED_VERSION)"
        )
    model_path = directory / Path(str(metadata["model_file"])).name
    if not model_path.is_file():
        raise ArtifactError(f"model file {model_path} is missing")
    actual = sha256_file(model_path)
    if actual != metadata["model_sha256"]:
        raise ArtifactError(
            f"sha256 mismatch for {model_path}: metadata says {metadata['model_sha256']}, file is {actual}"
        )
    if expect.sha256 and actual != expect.sha256:
        raise ArtifactError(
            f"{model_path} has sha256 {actual}; this deployment expects {expect.sha256} (MODEL_SERVER_EXPECTED_SHA256)"
        )
    if metadata["sklearn_version"] != sklearn.__version__:
        raise ArtifactError(
            f"artifact was trained with scikit-learn {metadata['sklearn_version']}, "
            f"this server runs {sklearn.__version__}; retrain or use a matching image"
        )
    model = deserialise(model_path, metadata["format"], trust_pickle, trusted_types)
    signature = check_model_matches(model, signature, str(model_path))
    return Artifact(model=model, metadata=metadata, signature=signature)


def check_model_matches(model: Any, signature: Signature, where: str) -> Signature:
    """The estimator takes exactly the signature's columns: by name (in order) when it was fitted on a
    DataFrame, else by count. Returns the signature, marked ``frame`` when the model knows names."""
    if not any(hasattr(model, method) for method in MODEL_METHODS):
        raise ArtifactError(f"{where} holds a {type(model).__name__}, which has none of {', '.join(MODEL_METHODS)}")
    n_in = getattr(model, "n_features_in_", len(signature))
    if n_in != len(signature):
        raise ArtifactError(f"{where}: the model expects {n_in} features; the signature lists {len(signature)}")
    fitted_names = getattr(model, "feature_names_in_", None)
    if fitted_names is None:
        return signature
    if [str(n) for n in fitted_names] != list(signature.names):
        raise ArtifactError(
            f"{where}: the model was fitted on columns {', '.join(map(str, fitted_names))}; "
            f"the signature lists {', '.join(signature.names)}"
        )
    return signature if signature.frame else dataclasses.replace(signature, frame=True)


def deserialise(path: Path, fmt: str, trust_pickle: bool, trusted_types: tuple[str, ...] = ()) -> Any:
    """The estimator in ``path``: skops checked against the trusted types, a pickle only when trusted."""
    if fmt == "joblib":
        if not trust_pickle:
            raise ArtifactError(
                f"{path} is a pickle-based artifact; loading it can run arbitrary code. "
                "Convert it to skops (scripts/package-model), or set MODEL_SERVER_TRUST_PICKLE=true for "
                "artifacts you built"
            )
        import joblib

        try:
            return joblib.load(path)
        except Exception as exc:  # a trusted pickle can still be corrupt
            raise ArtifactError(f"{path} could not be unpickled: {type(exc).__name__}: {exc}") from None
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    trusted = (*TRUSTED_TYPES, *trusted_types)
    # One pass over the file: skops audits every type against ``trusted`` before it constructs anything, so
    # the separate audit (a second full parse, 0.1 s of a HistGradientBoosting model's load) runs only to
    # word the refusal.
    try:
        return skops.io.load(path, trusted=list(trusted))
    except UntrustedTypesFoundException:
        raise ArtifactError(
            f"{path} contains types that are not trusted: {', '.join(untrusted_types(path, trusted))} "
            "(if you trust them, list them in MODEL_SERVER_TRUSTED_TYPES)"
        ) from None
    except Exception as exc:
        untrusted_types(path, trusted)  # not a skops file at all: says so
        raise ArtifactError(f"{path} could not be loaded: {type(exc).__name__}: {exc}") from None


def untrusted_types(path: Path, trusted: tuple[str, ...]) -> list[str]:
    """The types in the skops file at ``path`` that neither skops nor ``trusted`` vouches for."""
    import skops.io

    try:
        found = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # not a zip, truncated, or not a skops file at all
        raise ArtifactError(f"{path} is not a readable skops file: {type(exc).__name__}: {exc}") from None
    return sorted(t for t in found if t not in trusted)
