"""Stock Open Inference Protocol clients work unchanged: NVIDIA's tritonclient (HTTP), binary tensors included."""

from __future__ import annotations

import numpy as np
import pytest

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
