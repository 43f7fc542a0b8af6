"""Stock Open Inference Protocol clients work unchanged: NVIDIA's tritonclient (HTTP), binary tensors included."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from .conftest import ROWS

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture
def triton(start_server, artifact_dir):
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir)})
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield client
    client.close()


def test_health_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("diabetes")
    assert triton.is_model_ready("diabetes", "1")
    assert not triton.is_model_ready("unknown")
    server = triton.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    model = triton.get_model_metadata("diabetes")
    assert [tensor["name"] for tensor in model["inputs"]][:2] == ["age", "sex"]
    assert model["parameters"]["matrix_input"]["shape"] == [-1, 10]


@pytest.mark.parametrize("binary", [True, False], ids=["binary tensors", "JSON tensors"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_infer_with_default_client_settings(triton, served, binary, dtype):
    rows = ROWS.astype(dtype)
    tensor = httpclient.InferInput("input-0", list(rows.shape), "FP64" if dtype == np.float64 else "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    output = httpclient.InferRequestedOutput("predict", binary_data=binary)
    result = triton.infer("diabetes", [tensor], outputs=[output], request_id="req-9")
    np.testing.assert_array_equal(result.as_numpy("predict"), served.model.predict(rows.astype(np.float64)))
    assert result.get_response()["id"] == "req-9"


def test_infer_without_requested_outputs(triton, served):
    tensor = httpclient.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS)
    result = triton.infer("diabetes", [tensor])
    np.testing.assert_array_equal(result.as_numpy("predict"), served.model.predict(ROWS))


def test_errors_reach_the_client_as_messages(triton):
    tensor = httpclient.InferInput("input-0", [1, 3], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 3)))
    with pytest.raises(Exception, match="the model expects 10"):
        triton.infer("diabetes", [tensor])


PENGUIN_ROWS = [
    ["Dream", 46.5, 17.9, 192.0, 3500.0, "female"],
    ["Biscoe", float("nan"), float("nan"), float("nan"), float("nan"), "male"],
]


@pytest.fixture
def penguins_triton(start_server, penguins_dir):
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(penguins_dir)})
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield client, server
    client.close()


def expected_penguins(penguins_dir, outputs):
    from model_server.core import artifact, columns
    from model_server.core.runner import ModelRunner

    loaded = artifact.load(penguins_dir)
    rows = [[None if isinstance(v, float) and v != v else v for v in row] for row in PENGUIN_ROWS]
    batch = columns.Batch(rows=2, columns=columns.columns_from_rows(rows, loaded.signature, "rows"))
    return ModelRunner(loaded.model, loaded.signature).run(batch, outputs)


@pytest.mark.parametrize("binary", [True, False], ids=["binary tensors", "JSON tensors"])
def test_bytes_columns_from_tritonclient_reach_a_classifier_pipeline(penguins_triton, penguins_dir, binary):
    client, _ = penguins_triton
    inputs = []
    for index, tensor in enumerate(client.get_model_metadata("penguins")["inputs"]):
        values = np.array(
            [row[index] for row in PENGUIN_ROWS], dtype=object if tensor["datatype"] == "BYTES" else np.float64
        )
        item = httpclient.InferInput(tensor["name"], [2], tensor["datatype"])
        item.set_data_from_numpy(values, binary_data=binary)
        inputs.append(item)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("predict", "predict_proba")]
    result = client.infer("penguins", inputs, outputs=outputs)
    want = expected_penguins(penguins_dir, ("predict", "predict_proba"))
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predict")] == want["predict"].tolist()
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), want["predict_proba"])


def test_a_request_from_mlservers_pandas_codec_is_served(penguins_triton, penguins_dir):
    # What mlserver.codecs.PandasCodec.encode_request (MLServer 1.7.1) makes of a two-row DataFrame:
    # columns of shape [rows, 1], strings as BYTES with content_type "str", NaN as null.
    _, server = penguins_triton
    names = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex"]
    body = {"parameters": {"content_type": "pd"}, "inputs": []}
    for index, name in enumerate(names):
        strings = isinstance(PENGUIN_ROWS[0][index], str)
        tensor = {
            "name": name,
            "shape": [2, 1],
            "datatype": "BYTES" if strings else "FP64",
            "data": [None if not strings and row[index] != row[index] else row[index] for row in PENGUIN_ROWS],
        }
        if strings:
            tensor["parameters"] = {"content_type": "str"}
        body["inputs"].append(tensor)
    response = requests.post(f"{server.url}/v2/models/penguins/infer", json=body, timeout=5)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == expected_penguins(penguins_dir, ("predict",))["predict"].tolist()
