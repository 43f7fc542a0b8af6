"""scripts/serve, the README's first command, as a user runs it from their own directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import grpc
import requests
from model_server.transport.rpc import messages

from tests.conftest import ROOT, free_port


def test_a_model_dir_relative_to_where_serve_starts_is_served(artifact_dir, tmp_path):
    shutil.copytree(artifact_dir, tmp_path / "artifacts" / "mine")
    port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "serve")],
        cwd=tmp_path,
        env={**os.environ, "PORT": str(port), "MODEL_SERVER_MODEL_DIR": "artifacts/mine",
             "MODEL_SERVER_GRPC_PORT": str(grpc_port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code
            except requests.ConnectionError:
                status = None
            if status == 200:
                break
            time.sleep(0.3)
        assert status == 200, "the server never became ready on a relative MODEL_SERVER_MODEL_DIR"
        # serve starts the gRPC binding too (8081 unless told otherwise), ready with the model.
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            request_class, response_class = messages.methods(messages.HEALTH_SERVICE)["Check"]
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )
            assert check(request_class(service=""), timeout=10).status == 1  # SERVING
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
