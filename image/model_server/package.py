"""Package a model you trained yourself into a servable artifact (skops + metadata schema 2).

    python -m model_server.package MODEL --name N --version V --sample DATA.csv --output DIR
                                   [--target COLUMN] [--reference DATA] [--trust-pickle] [--trust-type TYPE ...]

MODEL is a ``.skops`` file, or a joblib/pickle file (``.joblib``, ``.pkl``, ``.pickle``) that is
read only with ``--trust-pickle`` (unpickling runs code) and converted: the artifact is always
skops. The CSV sample (a header row and a few dozen training rows; ``--target`` names a column to
drop) gives the signature: columns in the model's order, a datatype per column (FP64, INT64, BOOL,
BYTES), whether it may be null, the categories seen in string columns, a typical value. The model
must then predict on the whole sample through the same codecs the server uses, or nothing is
written. ``--reference`` (a larger training extract) gives the drift bins; without it the sample does, and
a sample too small for deciles gets coarser bins and a warning saying what PSI noise to expect. The output
directory is replaced atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .core import artifact, columns, drift
from .core.columns import Batch
from .core.runner import ModelRunner
from .core.signature import BOOL, BYTES, FP64, INT64, Column, Signature
from .errors import ArtifactError, ClientError

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
MAX_CATEGORIES = 1000  # more distinct strings than this is an identifier, not a category: none recorded


class PackageError(Exception):
    """What is wrong with the model, the sample or the arguments: one line for the user."""


# ---- the signature, from a sample of the training data ----------------------------------------------


def column_of(name: str, series: Any) -> Column:
    """One sample column -> its signature entry: datatype, nullable, categories, a typical value, and
    how its values fall into drift bins."""
    missing = series.isna()
    present = series[~missing]
    nullable = bool(missing.any())
    if present.empty:
        raise PackageError(f"sample column '{name}' has no values at all: its type cannot be known")
    column = _typed_column(name, series, present, nullable)
    return dataclasses.replace(column, distribution=drift.reference_of(column, series.to_numpy(dtype=object)))


def _typed_column(name: str, series: Any, present: Any, nullable: bool) -> Column:
    import pandas as pd

    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or (pd.api.types.is_object_dtype(dtype) and present.map(type).eq(bool).all()):
        return Column(name, BOOL, nullable, example=bool(present.mode().iloc[0]))
    if pd.api.types.is_integer_dtype(dtype):
        return Column(name, INT64, nullable, example=int(np.median(present.to_numpy())))
    if pd.api.types.is_float_dtype(dtype):
        return Column(name, FP64, nullable, example=float(np.median(present.to_numpy())))
    if (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_string_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
    ):
        kinds = {type(v).__name__ for v in present}
        if kinds != {"str"}:
            raise PackageError(f"sample column '{name}' mixes strings with {', '.join(sorted(kinds - {'str'}))}")
        counts = present.astype(str).value_counts()
        categories = tuple(sorted(counts.index)) if len(counts) <= MAX_CATEGORIES else ()
        return Column(name, BYTES, nullable, categories, example=str(counts.index[0]))
    raise PackageError(f"sample column '{name}' has dtype {dtype}; supported: numbers, booleans, strings")


def signature_of(model: Any, sample: Any) -> tuple[Signature, Any]:
    """The model's signature from a sample DataFrame (target already dropped), and the sample reordered
    to the model's columns. Names must match ``feature_names_in_`` when the model knows names."""
    fitted = getattr(model, "feature_names_in_", None)
    given = [str(c) for c in sample.columns]
    if fitted is not None:
        fitted = [str(n) for n in fitted]
        missing = [n for n in fitted if n not in given]
        unknown = [n for n in given if n not in fitted]
        if missing or unknown:
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"not in the model: {', '.join(unknown)}"] if unknown else []
            )
            hint = "; if one of them is the label, pass --target" if unknown and not missing else ""
            raise PackageError(
                f"sample columns do not match the columns the model was fitted on ({'; '.join(problems)}); "
                f"the model takes {', '.join(fitted)}{hint}"
            )
        sample = sample[fitted]
    else:
        n_in = getattr(model, "n_features_in_", None)
        if n_in is not None and n_in != len(given):
            raise PackageError(
                f"the model takes {n_in} features (n_features_in_) but the sample has {len(given)} columns "
                f"({', '.join(given)}); drop the target with --target or extra columns from the CSV"
            )
    signature = Signature(tuple(column_of(name, sample[name]) for name in sample.columns), frame=fitted is not None)
    return signature, sample


def batch_of(sample: Any, signature: Signature) -> Batch:
    """The sample as the server would receive it: each column through the same checks as a request."""
    try:
        checked = {
            column.name: columns.from_array(sample[column.name].to_numpy(dtype=object), column, "sample")
            for column in signature.columns
        }
    except ClientError as exc:
        raise PackageError(f"the sample does not fit its own signature: {exc.message}") from None
    return Batch(rows=len(sample), columns=checked)


# ---- metadata ---------------------------------------------------------------------------------------


def estimator_name(model: Any) -> str:
    """``Pipeline(ColumnTransformer, LogisticRegression)`` for pipelines, the class name otherwise."""
    steps = getattr(model, "steps", None)
    if steps:
        return f"{type(model).__name__}({', '.join(type(step).__name__ for _, step in steps)})"
    return type(model).__name__


def describe(
    model: Any,
    sample: Any,
    *,
    name: str,
    version: str,
    target: str | None,
    training_data: dict[str, Any],
    labels: Any = None,
    metrics: dict[str, Any] | None = None,
    drift_data: Any = None,
    nullable: tuple[str, ...] = (),
    not_nullable: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Schema-2 metadata for ``model``, proved on ``sample``: the server's runner must answer every
    output on every sample row. With ``labels``, the sample's score is recorded; with ``drift_data`` (a larger
    training extract), the drift bins come from it instead of the sample. Raises PackageError."""
    signature, sample = signature_of(model, sample)
    if drift_data is not None:
        signature = with_drift_reference(signature, drift_data)
    signature = nullable_from_model(model, signature, sample, nullable, not_nullable)
    try:
        runner = ModelRunner(model, signature)
        answers = runner.run(batch_of(sample, signature), tuple(runner.outputs))
    except (ArtifactError, ClientError) as exc:
        message = exc.message if isinstance(exc, ClientError) else str(exc)
        raise PackageError(f"the model cannot be served on this sample: {message}") from None
    description = runner.description
    if metrics is None:
        metrics = sample_metrics(answers.get("predict"), labels, description.task, len(sample))
    reference = runner.model_input_mean(batch_of(sample, signature))
    metadata: dict[str, Any] = {
        "name": name,
        "version": version,
        "estimator": estimator_name(model),
        "task": description.task,
        "inputs": signature.to_json(),
        "frame": signature.frame,
        "outputs": [output.to_json() for output in runner.outputs.values()],
        "target": target,
        "training_data": training_data,
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    if description.classes is not None:
        metadata["classes"] = list(description.classes)
    if reference is not None:  # linear explanations subtract the training mean of the model's input
        metadata["explanation"] = {"reference": reference}
    if metrics:
        metadata["metrics"] = metrics
    metadata["drift_reference"] = drift_reference_summary(len(sample) if drift_data is None else len(drift_data))
    return metadata


# ---- nullable columns ---------------------------------------------------------------------------------

PROBE_ROWS = 20


def nullable_from_model(
    model: Any, signature: Signature, sample: Any, nullable: tuple[str, ...], not_nullable: tuple[str, ...]
) -> Signature:
    """A column is nullable when the sample has a gap in it, or when the model answers with it missing: a
    HistGradientBoosting routes NaN, a Pipeline imputes it. Proved per column on the sample's first rows with
    that column emptied, every output finite; ``nullable`` must pass that proof, ``not_nullable`` skips it."""
    for name in (*nullable, *not_nullable):
        if name not in signature.by_name:
            raise PackageError(
                f"--nullable/--not-nullable {name!r} is not an input column ({', '.join(signature.names)})"
            )
    both = sorted(set(nullable) & set(not_nullable))
    if both:
        raise PackageError(f"{', '.join(both)} given as both --nullable and --not-nullable")
    rows = sample.head(PROBE_ROWS)
    described = []
    for column in signature.columns:
        if column.name in not_nullable:
            described.append(dataclasses.replace(column, nullable=False))
            continue
        if column.nullable:
            described.append(column)
            continue
        candidate = dataclasses.replace(column, nullable=True)
        trial = dataclasses.replace(
            signature, columns=tuple(candidate if c.name == column.name else c for c in signature.columns)
        )
        problem = _answers_without(model, trial, rows.assign(**{column.name: None}))
        if problem is not None and column.name in nullable:
            raise PackageError(f"--nullable {column.name}: the model cannot answer with it missing ({problem})")
        described.append(candidate if problem is None else column)
    return dataclasses.replace(signature, columns=tuple(described))


def _answers_without(model: Any, signature: Signature, rows: Any) -> str | None:
    """None when the model answers every output, finite, on ``rows``; else what went wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner = ModelRunner(model, signature)
            answers = runner.run(batch_of(rows, signature), tuple(runner.outputs))
    except (ArtifactError, ClientError, PackageError) as exc:
        return exc.message if isinstance(exc, ClientError) else str(exc)
    except Exception as exc:  # any failure of the model means: not with this column missing
        return f"{type(exc).__name__}: {exc}"
    for name, values in answers.items():
        if np.asarray(values).dtype.kind == "f" and not np.isfinite(values).all():
            return f"{name} is not finite"
    return None


# ---- the drift reference ------------------------------------------------------------------------------


def with_drift_reference(signature: Signature, frame: Any) -> Signature:
    """The signature with each column's drift bins taken from ``frame`` (the sample still types them)."""
    import pandas as pd

    absent = [c.name for c in signature.columns if c.name not in frame.columns]
    if absent:
        raise PackageError(f"the drift reference lacks the model's input column(s) {', '.join(absent)}")
    if frame.empty:
        raise PackageError("the drift reference has a header but no rows")
    described = []
    for column in signature.columns:
        values = frame[column.name]
        if column.datatype in (FP64, INT64):
            numbers = pd.to_numeric(values, errors="coerce")
            wrong = numbers.isna() & values.notna()
            if wrong.any():
                raise PackageError(
                    f"drift reference column '{column.name}' holds {values[wrong].iloc[0]!r}, not a number "
                    f"(the sample's '{column.name}' is {column.datatype})"
                )
            values = numbers
        distribution = drift.reference_of(column, values.to_numpy(dtype=object))
        described.append(dataclasses.replace(column, distribution=distribution))
    return dataclasses.replace(signature, columns=tuple(described))


def drift_reference_summary(rows: int) -> dict[str, Any]:
    """What the drift bins rest on, and the PSI training-like traffic will read from sampling noise alone."""
    bins = drift.bins_for(rows)
    return {
        "rows": rows,
        "bins_per_column": bins,
        "noise_floor": round(drift.noise_floor(bins, rows), 4),
        "window_rows": drift.EXPECTED_WINDOW,
    }


def drift_warning(summary: dict[str, Any]) -> str | None:
    """A line for the user when the reference is too small for deciles."""
    enough = drift.rows_for_deciles()
    if summary["rows"] >= enough:
        return None
    return (
        f"the drift reference has {summary['rows']} rows: {summary['bins_per_column']} bins per column keep "
        f"training-like traffic near {summary['noise_floor']:.3f} PSI at a {summary['window_rows']}-row window, "
        f"coarser than deciles, which need {enough} rows or more (--reference TRAINING_EXTRACT.csv)"
    )


# ---- the command ------------------------------------------------------------------------------------


def read_model(path: Path, *, trust_pickle: bool, trusted_types: tuple[str, ...]) -> Any:
    if not path.is_file():
        raise PackageError(f"model file {path} does not exist")
    trusted = (*artifact.TRUSTED_TYPES, *trusted_types)
    if path.suffix == ".skops":
        import skops.io

        try:
            untrusted = artifact.untrusted_types(path, trusted)
        except ArtifactError as exc:
            raise PackageError(str(exc)) from None
        if untrusted:
            raise PackageError(
                f"{path} contains types that are not trusted: {', '.join(untrusted)} "
                "(if you trust them: --trust-type TYPE here and MODEL_SERVER_TRUSTED_TYPES on the server)"
            )
        return skops.io.load(path, trusted=list(trusted))
    if path.suffix not in PICKLE_SUFFIXES:
        raise PackageError(f"{path}: expected a .skops file or a pickle ({', '.join(PICKLE_SUFFIXES)})")
    if not trust_pickle:
        raise PackageError(
            f"{path} is a pickle: loading it runs whatever code it holds. Pass --trust-pickle if you made it "
            "yourself; the artifact will be converted to skops"
        )
    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            return joblib.load(path)
        except InconsistentVersionWarning as warning:
            raise PackageError(
                f"{path} was pickled with scikit-learn {warning.original_sklearn_version}; the server runs "
                f"{warning.current_sklearn_version}: re-fit the model with that version"
            ) from None
        except Exception as exc:
            raise PackageError(f"{path} could not be unpickled: {type(exc).__name__}: {exc}") from None


def read_sample(path: Path, target: str | None) -> tuple[Any, Any]:
    """The sample's feature columns and, with ``target``, that column."""
    import pandas as pd

    if not path.is_file():
        raise PackageError(f"sample file {path} does not exist")
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise PackageError(f"{path} is not a readable CSV file: {' '.join(str(exc).split())}") from None
    if frame.empty:
        raise PackageError(f"{path} has a header but no rows: the model cannot be proved on it")
    duplicated = [c for c in frame.columns if str(c).endswith(".1") and str(c)[:-2] in frame.columns]
    if duplicated:
        raise PackageError(f"{path} repeats column(s) {', '.join(c[:-2] for c in duplicated)} in its header")
    labels = None
    if target is not None:
        if target not in frame.columns:
            raise PackageError(f"--target {target!r} is not a column of {path} ({', '.join(map(str, frame.columns))})")
        labels = frame.pop(target)
    return frame, labels


def read_reference(path: Path) -> Any:
    """A training extract for the drift bins: CSV, or Parquet when pyarrow is installed."""
    import pandas as pd

    if not path.is_file():
        raise PackageError(f"drift reference {path} does not exist")
    if path.suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError:
            raise PackageError(f"reading {path} needs pyarrow (pip install pyarrow), or give a CSV") from None
        except (ValueError, OSError) as exc:
            raise PackageError(f"{path} is not a readable Parquet file: {' '.join(str(exc).split())}") from None
    try:
        return pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise PackageError(f"{path} is not a readable CSV file: {' '.join(str(exc).split())}") from None


def sample_metrics(predicted: np.ndarray | None, labels: Any, task: str, rows: int) -> dict[str, Any]:
    """A score on the sample when the target is known: accuracy or R² (not a held-out claim)."""
    metrics: dict[str, Any] = {"sample_rows": rows}
    if predicted is None or labels is None or labels.isna().any():
        return metrics
    if task == "classification":
        metrics["sample_accuracy"] = round(float(np.mean(predicted == labels.to_numpy())), 6)
    elif task == "regression":
        from sklearn.metrics import r2_score

        metrics["sample_r2"] = round(float(r2_score(labels.to_numpy(dtype=float), predicted)), 6)
    return metrics


def package(args: argparse.Namespace) -> dict[str, Any]:
    """Read, prove and write; the output directory is touched only once everything has passed."""
    trusted_extra = tuple(args.trust_type)
    model = read_model(args.model, trust_pickle=args.trust_pickle, trusted_types=trusted_extra)
    sample, labels = read_sample(args.sample, args.target)
    reference = read_reference(args.reference) if args.reference is not None else None
    digest = hashlib.sha256(args.sample.read_bytes()).hexdigest()
    training_data = {"source": args.sample.name, "sample_rows": len(sample), "fingerprint": f"sha256:{digest}"}
    if args.reference is not None:
        training_data["drift_reference"] = args.reference.name
    metadata = describe(
        model,
        sample,
        name=args.name,
        version=args.version,
        target=args.target,
        labels=labels,
        training_data=training_data,
        drift_data=reference,
        nullable=tuple(args.nullable),
        not_nullable=tuple(args.not_nullable),
    )

    def server_would_load(model_file: Path) -> None:
        # A converted pickle may hold types the server refuses: say so now, not at deploy time.
        untrusted = artifact.untrusted_types(model_file, (*artifact.TRUSTED_TYPES, *trusted_extra))
        if untrusted:
            raise PackageError(
                f"the model holds types the server does not trust: {', '.join(untrusted)} "
                "(if you trust them: --trust-type TYPE here and MODEL_SERVER_TRUSTED_TYPES on the server)"
            )

    artifact.save(model, metadata, args.output, verify=server_would_load, prove=True)
    return artifact.read_metadata(args.output)


def valid_name(value: str) -> str:
    if not value or "/" in value or ":" in value:
        raise argparse.ArgumentTypeError(f"{value!r} must be non-empty and contain no '/' or ':'")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="package-model", description=(__doc__ or "").splitlines()[0])
    p.add_argument("model", type=Path, metavar="MODEL", help="fitted estimator: .skops, or .joblib/.pkl/.pickle")
    p.add_argument("--name", type=valid_name, required=True, help="model name served in URLs")
    p.add_argument("--version", type=valid_name, required=True, help="model version string")
    p.add_argument("--sample", type=Path, required=True, help="CSV with a header and a few dozen training rows")
    p.add_argument("--output", type=Path, required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--target", help="sample column holding the label/target: dropped from the signature")
    p.add_argument(
        "--reference",
        type=Path,
        metavar="DATA",
        help="a larger training extract (CSV, or Parquet with pyarrow) the drift bins are taken from; "
        f"{drift.rows_for_deciles()}+ rows give deciles (default: the sample)",
    )
    p.add_argument(
        "--nullable",
        action="append",
        default=[],
        metavar="COLUMN",
        help="a column that may be null when served (the model must answer without it); by default a column is "
        "nullable when the sample has a gap in it or the model answers with it missing",
    )
    p.add_argument(
        "--not-nullable", action="append", default=[], metavar="COLUMN", help="a column refused when null (422)"
    )
    p.add_argument("--trust-pickle", action="store_true", help="read a pickle (runs its code: only your own)")
    p.add_argument("--trust-type", action="append", default=[], metavar="TYPE", help="extra skops type to trust")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        metadata = package(args)
    except PackageError as exc:
        print(f"package-model: {exc}", file=sys.stderr)
        return 1
    warning = drift_warning(metadata["drift_reference"])
    if warning:
        print(f"package-model: warning: {warning}", file=sys.stderr)
    inputs = ", ".join(f"{c['name']} {c['datatype']}{'?' if c['nullable'] else ''}" for c in metadata["inputs"])
    outputs = ", ".join(o["name"] for o in metadata["outputs"])
    print(
        f"packaged {metadata['estimator']} '{metadata['name']}' v{metadata['version']} ({metadata['task']}) "
        f"-> {args.output}\n  inputs: {inputs}\n  outputs: {outputs}\n  sha256: {metadata['model_sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
