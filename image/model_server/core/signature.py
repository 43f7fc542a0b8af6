"""A model's signature: the input columns it takes and the outputs it can give.

The signature is written into the artifact's metadata by the packager (``package.py``) from a
sample of the training data, and read back here by the server. Everything a request is checked
against comes from it: column names and order, a datatype per column, whether a column may be
null, the categories seen for string columns. Version-1 artifacts (numeric feature names only)
read as all-FP64, non-nullable columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..errors import ArtifactError

# Column datatypes, named as the Open Inference Protocol names tensor datatypes.
FP64, INT64, BOOL, BYTES = "FP64", "INT64", "BOOL", "BYTES"
COLUMN_DATATYPES = (FP64, INT64, BOOL, BYTES)
NUMERIC = frozenset({FP64, INT64, BOOL})  # what a float matrix can carry (BOOL as 0/1)

TASKS = ("classification", "regression", "clustering", "outlier_detection", "transform")


@dataclass(frozen=True)
class Column:
    name: str
    datatype: str
    nullable: bool = False
    # String columns: the values seen in the sample (for messages and drift, not enforced: the model
    # decides whether an unseen category is an error).
    categories: tuple[str, ...] = ()
    # A typical value (median, or the most frequent category): example requests and smoke tests.
    example: Any = 0.0
    # How the training data fell into bins (drift.reference_of): what drift is measured against.
    distribution: dict[str, Any] | None = field(default=None, compare=False)

    def describe(self) -> str:
        kind = {FP64: "numbers", INT64: "whole numbers", BOOL: "true/false", BYTES: "strings"}[self.datatype]
        return f"{self.datatype} ({kind}{', nullable' if self.nullable else ''})"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "nullable": self.nullable}
        if self.categories:
            out["categories"] = list(self.categories)
        out["example"] = self.example
        if self.distribution is not None:
            out["distribution"] = self.distribution
        return out


@dataclass(frozen=True)
class Output:
    """One method the model answers: its V2 datatype, shape (rows first, -1) and parameters."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.parameters:
            out["parameters"] = self.parameters
        return out


@dataclass(frozen=True)
class Signature:
    columns: tuple[Column, ...]
    # The model was fitted on a DataFrame (it has feature_names_in_): it is given one, columns by name.
    frame: bool = False

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    @cached_property
    def numeric(self) -> bool:
        """Every column can travel in one float64 matrix (one 2-D V2 tensor, V1 rows of numbers)."""
        return all(c.datatype in NUMERIC for c in self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    def example_row(self) -> list[Any]:
        return [c.example for c in self.columns]

    def to_json(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.columns]


def read(metadata: dict[str, Any], where: str) -> Signature:
    """The signature recorded in ``metadata`` (schema 2 ``inputs``, or schema 1 ``feature_names``)."""
    if metadata.get("schema_version") == 1:
        names = metadata["feature_names"]
        return Signature(tuple(Column(name, FP64) for name in names))
    inputs = metadata.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ArtifactError(f"{where}: 'inputs' must be a non-empty list of columns")
    columns = []
    for index, raw in enumerate(inputs):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise ArtifactError(f"{where}: inputs[{index}] needs a 'name'")
        if raw.get("datatype") not in COLUMN_DATATYPES:
            raise ArtifactError(
                f"{where}: input '{raw['name']}' has datatype {raw.get('datatype')!r}; "
                f"expected one of {', '.join(COLUMN_DATATYPES)}"
            )
        categories = raw.get("categories", [])
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise ArtifactError(f"{where}: input '{raw['name']}' categories must be a list of strings")
        columns.append(
            Column(
                name=raw["name"],
                datatype=raw["datatype"],
                nullable=bool(raw.get("nullable", False)),
                categories=tuple(categories),
                example=raw.get("example", categories[0] if categories else 0.0),
                distribution=_distribution(raw.get("distribution"), raw["name"], where),
            )
        )
    names = [c.name for c in columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ArtifactError(f"{where}: input column(s) {', '.join(repeated)} appear twice")
    return Signature(tuple(columns), frame=bool(metadata.get("frame", False)))


def read_outputs(metadata: dict[str, Any], where: str) -> tuple[Output, ...] | None:
    """The outputs schema 2 recorded, or None for schema 1 (the server derives them from the model)."""
    raw = metadata.get("outputs")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise ArtifactError(f"{where}: 'outputs' must be a non-empty list")
    outputs = []
    for index, item in enumerate(raw):
        if not (isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("shape"), list)):
            raise ArtifactError(f"{where}: outputs[{index}] needs a 'name' and a 'shape'")
        outputs.append(
            Output(item["name"], str(item.get("datatype")), tuple(item["shape"]), dict(item.get("parameters", {})))
        )
    return tuple(outputs)


def _distribution(raw: Any, name: str, where: str) -> dict[str, Any] | None:
    """A column's recorded training distribution, checked enough that drift arithmetic cannot fail on it."""
    if raw is None:
        return None
    malformed = ArtifactError(f"{where}: input '{name}' has a malformed distribution")
    if not isinstance(raw, dict):
        raise malformed
    proportions = raw.get("proportions")
    bins = raw.get("edges", raw.get("categories"))
    if not (isinstance(proportions, list) and isinstance(bins, list) and isinstance(raw.get("missing"), float | int)):
        raise malformed
    expected = len(bins) + 1 if "edges" in raw else len(bins)
    if len(proportions) != expected or ("categories" in raw and not isinstance(raw.get("other"), float | int)):
        raise ArtifactError(
            f"{where}: input '{name}' distribution has {len(proportions)} proportions for {expected} bins"
        )
    return raw
