"""Codecs chosen by the model's signature: a checked Batch -> what the estimator takes, and what it
returns -> typed output arrays.

    MatrixCodec        float64 matrix in signature order: models fitted on numeric arrays (the fast path)
    ObjectMatrixCodec  object matrix: models fitted on arrays mixing strings and numbers, without names
    FrameCodec         pandas DataFrame, columns by name: models fitted on a DataFrame (ColumnTransformer
                       selecting columns by name needs one). pandas is imported only for these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .columns import Batch
from .signature import BOOL, BYTES, FP64, INT64, Output, Signature


class MatrixCodec:
    """The columns side by side in signature order, as the float64 matrix a numeric model was fitted on."""

    name = "float matrix"
    dtype: type = np.float64

    def __init__(self, signature: Signature) -> None:
        self.signature = signature

    def encode(self, batch: Batch) -> np.ndarray:
        if batch.matrix is not None:
            return batch.matrix
        assert batch.columns is not None
        out: np.ndarray = np.empty((batch.rows, len(self.signature)), dtype=self.dtype)
        for index, name in enumerate(self.signature.names):
            out[:, index] = batch.columns[name]
        return out


class ObjectMatrixCodec(MatrixCodec):
    """The same as an object matrix: strings and numbers side by side, for a model fitted on one."""

    name = "object matrix"
    dtype = object


class FrameCodec:
    name = "DataFrame"

    def __init__(self, signature: Signature) -> None:
        import pandas  # only models fitted on a DataFrame pay for pandas (import time, memory)

        self._pandas = pandas
        self.signature = signature

    def encode(self, batch: Batch) -> Any:
        names = self.signature.names
        if batch.columns is not None:
            data = {name: batch.columns[name] for name in names}
        else:
            assert batch.matrix is not None
            data = {name: batch.matrix[:, index] for index, name in enumerate(names)}
        return self._pandas.DataFrame(data, copy=False)


Codec = MatrixCodec | ObjectMatrixCodec | FrameCodec


def choose(signature: Signature) -> Codec:
    """The codec the model was fitted for: a DataFrame if it knows column names, else a matrix."""
    if signature.frame:
        return FrameCodec(signature)
    if signature.numeric:
        return MatrixCodec(signature)
    return ObjectMatrixCodec(signature)


# ---- outputs -----------------------------------------------------------------------------------------


def output_datatype(values: np.ndarray) -> str:
    """The V2 datatype that carries an estimator's output without loss."""
    kind = values.dtype.kind
    if kind == "b":
        return BOOL
    if kind in "iu":
        return INT64
    if kind == "f":
        return FP64
    if kind == "O" and values.size and all(isinstance(v, bool | np.bool_) for v in values.ravel()):
        return BOOL
    if kind == "O" and values.size and all(isinstance(v, int | np.integer) for v in values.ravel()):
        return INT64
    if kind == "O" and values.size and all(isinstance(v, float | np.floating) for v in values.ravel()):
        return FP64
    return BYTES


def dense(values: Any) -> np.ndarray:
    """An estimator's raw output as an ndarray (transformers may answer with a sparse matrix)."""
    if hasattr(values, "toarray"):
        values = values.toarray()
    return np.asarray(values)


def as_datatype(values: np.ndarray, output: Output) -> np.ndarray:
    """Raw output -> the array the protocols encode for ``output``'s datatype."""
    if output.datatype == FP64:
        return np.asarray(values, dtype=np.float64)
    if output.datatype == INT64:
        return np.asarray(values, dtype=np.int64)
    if output.datatype == BOOL:
        return np.asarray(values, dtype=bool)
    return np.asarray([str(v) for v in values.ravel()], dtype=object).reshape(values.shape)


def json_label(value: Any) -> Any:
    """A class label as JSON: numpy scalars to Python (str, int, bool, float)."""
    return value.item() if isinstance(value, np.generic) else value
