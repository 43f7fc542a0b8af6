"""The load-time proofs' answers, recorded in the artifact so that a server need not repeat them.

Two checks make a model's load slower than the load itself: the compiled plan answers the probe
batches as scikit-learn does (``compiled.prove``: a 100-tree forest pipeline's reference side is ~24
scikit-learn calls, ~0.35 s), and the explainer's baseline + contributions reproduce scikit-learn's
value (``explain.Explainer.check``, ~0.15 s). Both are deterministic: their answer depends only on the
model file's bytes, the signature and explanation reference in metadata.json, this package's code and
the numeric libraries' versions. The packager (scripts/package-model, ``model_server.train``) runs them
once and records the answer under a fingerprint of all of that. A server whose own fingerprint of the
artifact matches takes the answer; any other (another image, another scikit-learn, a hand-edited
metadata.json) proves again at load, as it always did.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]  # model_server/


@dataclass(frozen=True)
class Proof:
    """What proving found: how predictions are computed, and why explanations are not served ('' when they are)."""

    fingerprint: str
    path: str
    unexplained: str

    def as_json(self) -> dict[str, str]:
        return {"fingerprint": self.fingerprint, "path": self.path, "unexplained": self.unexplained}


@cache
def _code_and_libraries() -> str:
    """This package's source and the versions that decide what a proof finds, as one digest."""
    import numpy
    import scipy
    import sklearn

    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    versions = (sklearn.__version__, numpy.__version__, scipy.__version__, sys.version, platform.machine())
    digest.update(json.dumps(versions).encode())
    return digest.hexdigest()


def fingerprint(metadata: dict[str, Any]) -> str:
    """The artifact's model bytes (by sha256), what the proofs read from its metadata, the code and libraries."""
    read = {key: metadata.get(key) for key in ("model_sha256", "inputs", "frame", "explanation")}
    digest = hashlib.sha256(json.dumps(read, sort_keys=True, default=str).encode())
    digest.update(_code_and_libraries().encode())
    return digest.hexdigest()


def record(model: Any, metadata: dict[str, Any]) -> dict[str, str]:
    """Prove ``model`` as a server loading this artifact would, and the answer for metadata.json's "proof"."""
    from .artifact import check_model_matches
    from .runner import ModelRunner
    from .signature import read as read_signature

    signature = check_model_matches(model, read_signature(metadata, "metadata"), "the model")
    reference = metadata.get("explanation", {}).get("reference")
    runner = ModelRunner(model, signature, reference)
    return Proof(fingerprint(metadata), runner.description.path, runner.unexplained).as_json()


def recorded(metadata: dict[str, Any]) -> Proof | None:
    """The artifact's recorded proof when it was made for exactly this artifact, code and libraries; else None."""
    entry = metadata.get("proof")
    if not isinstance(entry, dict):
        return None
    made_for, path, unexplained = (entry.get(key) for key in ("fingerprint", "path", "unexplained"))
    if not (isinstance(made_for, str) and isinstance(path, str) and isinstance(unexplained, str)):
        return None
    return Proof(made_for, path, unexplained) if made_for == fingerprint(metadata) else None
