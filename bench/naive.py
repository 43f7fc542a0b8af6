"""The tutorial-style baseline: Flask, request.get_json(), model.predict, jsonify, gunicorn sync workers.

Served with the same artifact as the real server so the arithmetic is identical. Rows given as
objects (V1) or several tensors (V2) become a DataFrame, as a tutorial for pandas models does.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
from flask import Flask, Response, jsonify, request
from model_server.core import artifact

model = artifact.load(Path(os.environ["MODEL_SERVER_MODEL_DIR"])).model
app = Flask(__name__)


def _plain(predictions: np.ndarray) -> list[float | str]:
    plain: list[float | str] = predictions.tolist()  # numbers, or class labels for the penguin models
    return plain


@app.post("/v1/models/<name>:predict")
def predict_v1(name: str) -> Response:
    rows = request.get_json()["instances"]
    features: pd.DataFrame | np.ndarray = pd.DataFrame(rows) if rows and isinstance(rows[0], dict) else np.array(rows)
    return jsonify({"predictions": _plain(model.predict(features))})


@app.post("/v2/models/<name>/infer")
def infer_v2(name: str) -> Response:
    inputs = request.get_json()["inputs"]
    features: pd.DataFrame | np.ndarray
    if len(inputs) > 1:
        features = pd.DataFrame({tensor["name"]: tensor["data"] for tensor in inputs})
    else:
        features = np.array(inputs[0]["data"]).reshape(inputs[0]["shape"])
    predictions = _plain(model.predict(features))
    datatype = "BYTES" if predictions and isinstance(predictions[0], str) else "FP64"
    return jsonify(
        {
            "model_name": name,
            "outputs": [{"name": "predict", "datatype": datatype, "shape": [len(predictions)], "data": predictions}],
        }
    )
