"""The model artifact directory: the contract between training, the image and the chart's model volume.

Layout::

    <dir>/model.skops      the fitted estimator, skops format (no pickle execution on load)
    <dir>/metadata.json    name, version, features, target, versions, metrics, sha256 ...

``save`` writes a new directory atomically (temp dir, then rename); ``load`` verifies the
checksum and the scikit-learn version before any byte of the model is deserialised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sklearn

from .errors import ArtifactError

METADATA_FILE = "metadata.json"
SKOPS_FILE = "model.skops"
PICKLE_FILE = "model.joblib"
SCHEMA_VERSION = 1
REQUIRED_KEYS = (
    "schema_version",
    "name",
    "version",
    "format",
    "model_file",
    "model_sha256",
    "feature_names",
    "n_features",
    "target",
    "sklearn_version",
)

# Types a skops file may contain beyond skops' own safe defaults. Anything else is refused:
# a tampered or foreign artifact cannot make the loader construct arbitrary objects.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.linear_model._base.LinearRegression",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "numpy.random._mt19937.MT19937",
    "numpy.random.mtrand.RandomState",
)


@dataclass(frozen=True)
class Artifact:
    model: Any
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["feature_names"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(model: Any, metadata: dict[str, Any], directory: Path, *, fmt: str = "skops") -> Path:
    """Write ``model`` and its metadata to ``directory`` atomically; return the metadata path.

    An existing directory is replaced only once the new one is complete.
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
        full = {
            **metadata,
            "schema_version": SCHEMA_VERSION,
            "format": fmt,
            "model_file": model_file,
            "model_sha256": sha256_file(staging / model_file),
            "sklearn_version": sklearn.__version__,
        }
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
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    names = metadata["feature_names"]
    if not (
        isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == metadata["n_features"]
    ):
        raise ArtifactError(f"{path}: feature_names must be n_features strings")
    if metadata["format"] not in ("skops", "joblib"):
        raise ArtifactError(f"{path}: unknown format {metadata['format']!r}")
    return metadata


def load(directory: Path, *, trust_pickle: bool = False) -> Artifact:
    """Load and verify the artifact in ``directory``; raise ArtifactError with one clear sentence."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    model_path = directory / Path(str(metadata["model_file"])).name
    if not model_path.is_file():
        raise ArtifactError(f"model file {model_path} is missing")
    actual = sha256_file(model_path)
    if actual != metadata["model_sha256"]:
        raise ArtifactError(
            f"sha256 mismatch for {model_path}: metadata says {metadata['model_sha256']}, file is {actual}"
        )
    if metadata["sklearn_version"] != sklearn.__version__:
        raise ArtifactError(
            f"artifact was trained with scikit-learn {metadata['sklearn_version']}, "
            f"this server runs {sklearn.__version__}; retrain or use a matching image"
        )
    model = _deserialise(model_path, metadata["format"], trust_pickle)
    if not hasattr(model, "predict"):
        raise ArtifactError(f"{model_path} holds a {type(model).__name__}, which has no predict()")
    n_in = getattr(model, "n_features_in_", metadata["n_features"])
    if n_in != metadata["n_features"]:
        raise ArtifactError(f"model expects {n_in} features, metadata says {metadata['n_features']}")
    return Artifact(model=model, metadata=metadata)


def _deserialise(path: Path, fmt: str, trust_pickle: bool) -> Any:
    if fmt == "joblib":
        if not trust_pickle:
            raise ArtifactError(
                f"{path} is a pickle-based artifact; loading it can run arbitrary code. "
                "Convert it to skops, or set MODEL_SERVER_TRUST_PICKLE=true for artifacts you built"
            )
        import joblib

        try:
            return joblib.load(path)
        except Exception as exc:  # a trusted pickle can still be corrupt
            raise ArtifactError(f"{path} could not be unpickled: {type(exc).__name__}: {exc}") from None
    import skops.io

    try:
        untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
    except Exception as exc:  # not a zip, truncated, or not a skops file at all
        raise ArtifactError(f"{path} is not a readable skops file: {type(exc).__name__}: {exc}") from None
    if untrusted:
        raise ArtifactError(f"{path} contains types that are not trusted: {', '.join(sorted(untrusted))}")
    try:
        return skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except Exception as exc:
        raise ArtifactError(f"{path} could not be loaded: {type(exc).__name__}: {exc}") from None
