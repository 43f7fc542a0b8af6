"""The tutorial-style baseline: Flask, request.get_json(), model.predict, jsonify, gunicorn sync workers.

Served with the same artifact as the real server so the arithmetic is identical.
"""

import os

import numpy as np
from flask import Flask, jsonify, request
from model_server import artifact

model = artifact.load(os.environ["MODEL_SERVER_MODEL_DIR"]).model
app = Flask(__name__)


@app.post("/v1/models/<name>:predict")
def predict_v1(name):
    rows = request.get_json()["instances"]
    return jsonify({"predictions": model.predict(np.array(rows)).tolist()})


@app.post("/v2/models/<name>/infer")
def infer_v2(name):
    tensor = request.get_json()["inputs"][0]
    rows = np.array(tensor["data"]).reshape(tensor["shape"])
    predictions = model.predict(rows).tolist()
    return jsonify(
        {
            "model_name": name,
            "outputs": [{"name": "predict", "datatype": "FP64", "shape": [len(predictions)], "data": predictions}],
        }
    )
