"""KServe's and MLServer's own gRPC stubs (the protobufs they ship, in their benchmark virtualenvs) call this
server's gRPC binding unchanged: readiness, metadata, an inference with typed FP64 contents and one with raw
contents, and a refusal as a status code."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from bench.harness import BENCH_VENV
from tests.server.conftest import ROWS

pytestmark = pytest.mark.slow

# Run by the peer's interpreter: only its own packages (grpc, numpy, its generated messages) are imported.
CLIENT = """
import json, sys
import grpc, numpy as np
if sys.argv[2] == "kserve":
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as stubs
else:
    from mlserver.grpc import dataplane_pb2 as pb, dataplane_pb2_grpc as stubs
rows = np.array(json.loads(sys.argv[3]))
stub = stubs.GRPCInferenceServiceStub(grpc.insecure_channel(sys.argv[1]))
out = {"live": stub.ServerLive(pb.ServerLiveRequest()).live, "ready": stub.ServerReady(pb.ServerReadyRequest()).ready,
       "model_ready": stub.ModelReady(pb.ModelReadyRequest(name="diabetes")).ready}
metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="diabetes"))
out["inputs"] = [t.name for t in metadata.inputs]
typed = pb.ModelInferRequest(model_name="diabetes", id="typed")
tensor = typed.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
tensor.contents.fp64_contents.extend(rows.ravel().tolist())
raw = pb.ModelInferRequest(model_name="diabetes", raw_input_contents=[rows.astype("<f8").tobytes()])
raw.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
for name, request in (("typed", typed), ("raw", raw)):
    response = stub.ModelInfer(request)
    out[name] = np.frombuffer(response.raw_output_contents[0], dtype="<f8").tolist()
    out[name + "_id"] = response.id
try:
    stub.ModelInfer(pb.ModelInferRequest(model_name="diabetes"))
except grpc.RpcError as exc:
    out["refused"] = [exc.code().name, exc.details()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("peer", ["kserve", "mlserver"])
def test_the_peers_generated_stubs_call_the_grpc_binding(peer, start_server, artifact_dir):
    python = BENCH_VENV / peer / "bin" / "python"
    if not python.exists():
        message = f"{python} missing: scripts/bench --install-peers (tests/bench/test_bench_report.py runs it first)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from msops import local

    port = local.free_port()
    start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir), "MODEL_SERVER_GRPC_PORT": str(port)})
    run = subprocess.run(
        [str(python), "-c", CLIENT, f"127.0.0.1:{port}", peer, json.dumps(ROWS.tolist())],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert (out["live"], out["ready"], out["model_ready"]) == (True, True, True)
    assert out["inputs"][:2] == ["age", "sex"]
    from model_server.core import artifact

    expected = artifact.load(artifact_dir).model.predict(ROWS)
    np.testing.assert_array_equal(out["typed"], expected)
    np.testing.assert_array_equal(out["raw"], expected)
    assert out["typed_id"] == "typed"
    assert out["refused"] == ["INVALID_ARGUMENT", "inputs must be a non-empty list of tensors"]
