"""Train the default regressor on scikit-learn's diabetes data and write a model artifact.

Deterministic: a fixed seed for the held-out split and the estimator, so the same code and
library versions give the same model and the same sha256-verified metrics.

    python -m model_server.train --output artifacts/model [--estimator linear] [--format skops]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

from . import artifact

SEED = 42
TEST_SIZE = 0.2
ESTIMATORS = {
    "linear": lambda: LinearRegression(),
    "ridge": lambda: Ridge(alpha=0.1, random_state=SEED),
    "random-forest": lambda: RandomForestRegressor(n_estimators=50, max_depth=8, random_state=SEED),
}


def fingerprint(features: np.ndarray, target: np.ndarray) -> str:
    """sha256 over the exact training bytes: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for array in (features, target):
        contiguous = np.ascontiguousarray(array, dtype=np.float64)
        digest.update(str(contiguous.shape).encode())
        digest.update(contiguous.tobytes())
    return "sha256:" + digest.hexdigest()


def train(estimator: str = "linear", name: str = "diabetes", version: str = "1") -> tuple[Any, dict[str, Any]]:
    """Fit the estimator on a held-out split; return the model and its metadata (without file fields)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r} (choose from {', '.join(ESTIMATORS)})")
    data = load_diabetes()
    x_train, x_test, y_train, y_test = train_test_split(data.data, data.target, test_size=TEST_SIZE, random_state=SEED)
    model = ESTIMATORS[estimator]()
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    metadata = {
        "name": name,
        "version": version,
        "estimator": type(model).__name__,
        "feature_names": list(data.feature_names),
        "n_features": int(data.data.shape[1]),
        "target": "disease progression one year after baseline",
        "metrics": {
            "mse": round(float(mean_squared_error(y_test, predicted)), 6),
            "r2": round(float(r2_score(y_test, predicted)), 6),
            "test_rows": len(y_test),
            "train_rows": len(y_train),
        },
        "training_data": {
            "source": "sklearn.datasets.load_diabetes",
            "fingerprint": fingerprint(data.data, data.target),
            "split_seed": SEED,
            "test_size": TEST_SIZE,
        },
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    return model, metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="artifact directory to write (replaced atomically)")
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="linear")
    parser.add_argument("--name", default="diabetes", help="model name served in URLs (default: diabetes)")
    parser.add_argument("--version", default="1", help="model version string (default: 1)")
    parser.add_argument(
        "--format",
        choices=("skops", "joblib"),
        default="skops",
        help="skops (default, safe to load) or joblib (pickle: needs MODEL_SERVER_TRUST_PICKLE=true to serve)",
    )
    args = parser.parse_args(argv)
    if not args.name or "/" in args.name or ":" in args.name:
        parser.error(f"--name {args.name!r} must be non-empty and contain no '/' or ':'")
    if not args.version or "/" in args.version:
        parser.error(f"--version {args.version!r} must be non-empty and contain no '/'")
    model, metadata = train(args.estimator, args.name, args.version)
    artifact.save(model, metadata, args.output, fmt=args.format)
    metrics = metadata["metrics"]
    print(
        f"trained {metadata['estimator']} '{args.name}' v{args.version}: "
        f"held-out MSE {metrics['mse']:.2f}, R² {metrics['r2']:.4f} -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
