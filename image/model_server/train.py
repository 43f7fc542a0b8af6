"""Train a demo model and write its artifact: the diabetes regressor or the Palmer penguins classifier.

    python -m model_server.train --output DIR [--demo diabetes|penguins] [--estimator E] [--trees N]

``diabetes`` (default): a regressor on scikit-learn's diabetes data, ten numeric columns.
``penguins``: a species classifier on the Palmer penguins (the ``palmerpenguins`` package ships
the data): a Pipeline of a ColumnTransformer (imputer + one-hot encoder on the string columns
island and sex, imputer + scaler on the measurements, which have real missing values) and a
classifier. Deterministic: a fixed seed for the held-out split and the estimator. The signature is
taken from the training rows, as ``model_server.package`` takes it from a sample.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import package
from .core import artifact

SEED = 42
TEST_SIZE = 0.2


def fingerprint(*arrays: Any) -> str:
    """sha256 over the exact training values: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for array in arrays:
        values = np.asarray(array)
        digest.update(str(values.shape).encode())
        digest.update(
            values.astype(np.float64).tobytes()
            if values.dtype.kind in "biuf"
            else "\x1f".join(map(str, values.ravel())).encode()
        )
    return "sha256:" + digest.hexdigest()


# ---- diabetes: a regressor on ten numeric columns -----------------------------------------------------

# Three rows of the diabetes data (its first three, rounded): the request rows of the tests, the
# benchmark and the image checks.
DIABETES_ROWS = (
    (0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017),
    (-0.001, -0.044, -0.051, -0.026, -0.008, -0.019, 0.074, -0.039, -0.068, -0.092),
    (0.085, 0.050, 0.044, -0.005, -0.045, -0.034, -0.032, -0.002, 0.002, -0.025),
)


def diabetes_estimators(trees: int) -> dict[str, Callable[[], Any]]:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression, Ridge

    return {
        "linear": LinearRegression,
        "ridge": lambda: Ridge(alpha=0.1, random_state=SEED),
        "random-forest": lambda: RandomForestRegressor(n_estimators=trees, max_depth=8, random_state=SEED),
    }


def train_diabetes(estimator: str, trees: int) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    import pandas as pd
    from sklearn.datasets import load_diabetes
    from sklearn.metrics import mean_squared_error, r2_score
    from sklearn.model_selection import train_test_split

    data = load_diabetes()
    x_train, x_test, y_train, y_test = train_test_split(data.data, data.target, test_size=TEST_SIZE, random_state=SEED)
    model = diabetes_estimators(trees)[estimator]()
    model.fit(x_train, y_train)  # numeric arrays: served through the float-matrix fast path
    predicted = model.predict(x_test)
    metrics = {
        "mse": round(float(mean_squared_error(y_test, predicted)), 6),
        "r2": round(float(r2_score(y_test, predicted)), 6),
        "test_rows": len(y_test),
        "train_rows": len(y_train),
    }
    source = {"source": "sklearn.datasets.load_diabetes", "fingerprint": fingerprint(data.data, data.target)}
    frame = pd.DataFrame(x_train, columns=data.feature_names)
    return model, frame, metrics, source


# ---- penguins: a classifier pipeline with string columns and missing values -------------------------

PENGUIN_STRINGS = ["island", "sex"]
PENGUIN_NUMBERS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


def penguin_estimators(trees: int) -> dict[str, Callable[[], Any]]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    def pipeline(classifier: Any) -> Any:
        prepare = ColumnTransformer(
            [
                (
                    "strings",
                    make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
                    PENGUIN_STRINGS,
                ),
                ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), PENGUIN_NUMBERS),
            ]
        )
        return Pipeline([("prepare", prepare), ("classify", classifier)])

    return {
        "logistic": lambda: pipeline(LogisticRegression(max_iter=1000, random_state=SEED)),
        "random-forest": lambda: pipeline(RandomForestClassifier(n_estimators=trees, random_state=SEED)),
        # Three classes: one regression tree per class and stage, trees * 3 in all.
        "gradient-boosting": lambda: pipeline(GradientBoostingClassifier(n_estimators=trees, random_state=SEED)),
        # Native categorical support: the string columns arrive as pandas categories, no encoder.
        "hist-gradient-boosting": lambda: HistGradientBoostingClassifier(
            categorical_features="from_dtype", random_state=SEED
        ),
        # README's "bring your own model" shape: strings to codes, numbers as they are (gaps included), the
        # codes split as categories.
        "hgb-pipeline": lambda: make_pipeline(
            ColumnTransformer(
                [
                    (
                        "strings",
                        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan),
                        PENGUIN_STRINGS,
                    )
                ],
                remainder="passthrough",
            ),
            HistGradientBoostingClassifier(
                max_iter=trees, categorical_features=list(range(len(PENGUIN_STRINGS))), random_state=SEED
            ),
        ),
    }


def train_penguins(estimator: str, trees: int) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    from palmerpenguins import load_penguins
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.model_selection import train_test_split

    data = load_penguins()
    features = data[PENGUIN_STRINGS[:1] + PENGUIN_NUMBERS + PENGUIN_STRINGS[1:]]
    labels = data["species"]
    if estimator == "hist-gradient-boosting":
        features = features.astype({name: "category" for name in PENGUIN_STRINGS})
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=TEST_SIZE, random_state=SEED, stratify=labels
    )
    model = penguin_estimators(trees)[estimator]()
    model.fit(x_train, y_train)
    metrics = {
        "accuracy": round(float(accuracy_score(y_test, model.predict(x_test))), 6),
        "log_loss": round(float(log_loss(y_test, model.predict_proba(x_test), labels=model.classes_)), 6),
        "test_rows": len(y_test),
        "train_rows": len(y_train),
    }
    source = {"source": "palmerpenguins.load_penguins", "fingerprint": fingerprint(features.to_numpy(), labels)}
    return model, x_train, metrics, source


@dataclass(frozen=True)
class Demo:
    train: Callable[[str, int], tuple[Any, Any, dict[str, Any], dict[str, Any]]]
    estimators: Callable[[int], dict[str, Callable[[], Any]]]
    default_estimator: str
    target: str


DEMOS = {
    "diabetes": Demo(train_diabetes, diabetes_estimators, "linear", "disease progression one year after baseline"),
    "penguins": Demo(train_penguins, penguin_estimators, "logistic", "species"),
}


def train(
    demo: str = "diabetes", estimator: str | None = None, name: str | None = None, version: str = "1", trees: int = 100
) -> tuple[Any, dict[str, Any]]:
    """Fit a demo model on a held-out split; return it with its schema-2 metadata (without file fields)."""
    if demo not in DEMOS:
        raise ValueError(f"unknown demo {demo!r} (choose from {', '.join(DEMOS)})")
    spec = DEMOS[demo]
    estimator = estimator or spec.default_estimator
    if estimator not in spec.estimators(trees):
        raise ValueError(
            f"unknown estimator {estimator!r} for {demo} (choose from {', '.join(spec.estimators(trees))})"
        )
    model, x_train, metrics, source = spec.train(estimator, trees)
    metadata = package.describe(
        model,
        x_train,
        name=name or demo,
        version=version,
        target=spec.target,
        metrics=metrics,
        training_data={**source, "split_seed": SEED, "test_size": TEST_SIZE},
    )
    return model, metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="artifact directory (replaced atomically)")
    parser.add_argument("--demo", choices=sorted(DEMOS), default="diabetes", help="which demo model (default diabetes)")
    parser.add_argument(
        "--estimator",
        help="diabetes: linear (default), ridge, random-forest; penguins: logistic (default), random-forest, "
        "gradient-boosting, hist-gradient-boosting, hgb-pipeline",
    )
    parser.add_argument(
        "--trees",
        type=int,
        default=100,
        help="trees in a random forest, stages of gradient-boosting, iterations of hgb-pipeline (default 100)",
    )
    parser.add_argument("--name", type=package.valid_name, help="model name served in URLs (default: the demo's)")
    parser.add_argument("--version", type=package.valid_name, default="1", help="model version string (default: 1)")
    parser.add_argument(
        "--format",
        choices=("skops", "joblib"),
        default="skops",
        help="skops (default, safe to load) or joblib (pickle: needs MODEL_SERVER_TRUST_PICKLE=true to serve)",
    )
    args = parser.parse_args(argv)
    if args.trees < 1:
        parser.error(f"--trees {args.trees} must be at least 1")
    try:
        model, metadata = train(args.demo, args.estimator, args.name, args.version, args.trees)
    except ValueError as exc:
        parser.error(str(exc))
    except package.PackageError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 1
    artifact.save(model, metadata, args.output, fmt=args.format, prove=True)
    scores = ", ".join(f"{key} {value}" for key, value in metadata["metrics"].items() if not key.endswith("_rows"))
    trained = f"{metadata['estimator']} '{metadata['name']}' v{metadata['version']}"
    print(f"trained {trained}: held-out {scores} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
