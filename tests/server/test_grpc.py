"""The Open Inference Protocol's gRPC binding: NVIDIA's tritonclient.grpc at its defaults, typed contents and
BYTES columns through the server's own messages, refusals as gRPC status codes with REST's messages, auth,
TLS, health, request IDs and metrics; several workers sharing the port in a slow test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from model_server.core import artifact
from model_server.transport.rpc import client as rpc_client
from model_server.transport.rpc import messages
from msops import local, protos
from msops.pki import CA, SecretDir

from tests.conftest import ROOT

from .conftest import ROWS, wait_for
from .test_security import write_tokens

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402 - after the importorskip

INFER = rpc_client.INFER


def grpc_env(model_dir: Path | str, **extra: str) -> dict[str, str]:
    return {"MODEL_SERVER_MODEL_DIR": str(model_dir), "MODEL_SERVER_GRPC_PORT": str(local.free_port()), **extra}


def grpc_port(server) -> int:
    return int(server.env["MODEL_SERVER_GRPC_PORT"])


Call = rpc_client.Method  # one method of the server's services, with the server's own message classes


def one_row_request() -> Any:
    """A ModelInferRequest of the diabetes model's first row, raw (as tritonclient sends it)."""
    request = messages.ModelInferRequest(model_name="diabetes", raw_input_contents=[ROWS[:1].tobytes()])
    request.inputs.add(name="input-0", datatype="FP64", shape=[1, 10])
    return request


@pytest.fixture
def server(start_server, artifact_dir):
    env = grpc_env(artifact_dir)
    started = start_server(env)
    started.env = env
    return started


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(server)}") as opened:
        yield opened


@pytest.fixture
def triton(server):
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port(server)}")
    yield client
    client.close()


def refusal(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call(*args, **kwargs)
    return refused.value.code(), refused.value.details()


# ---- the definitions ----------------------------------------------------------------------------------


def test_the_checked_in_descriptor_set_is_compiled_from_the_protos():
    assert protos.DESCRIPTORS.read_bytes() == protos.compile_descriptors(), "stale: run scripts/protos"


def test_what_the_master_loads_never_imports_grpc(artifact_dir, tmp_path):
    # gRPC does not survive a fork: the master (gunicorn.conf.py, then the preloaded app) must not import it,
    # only each worker after the fork (post_worker_init). A positive control: the worker's module does.
    check = (
        "import runpy, sys\n"
        "runpy.run_path('gunicorn.conf.py')\n"
        "from model_server.transport.app import create_app\n"
        "create_app()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('grpc', 'model_server.transport.rpc'))))\n"
        "from model_server.transport.rpc import service\n"
        "print('grpc' in sys.modules)\n"
    )
    env = {**os.environ, **grpc_env(artifact_dir), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    run = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT / "image", env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == ["[]", "True"], run.stdout


# ---- tritonclient.grpc, unchanged ---------------------------------------------------------------------


def test_tritonclient_health_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("diabetes")
    assert triton.is_model_ready("diabetes", "1")
    assert not triton.is_model_ready("unknown")
    assert not triton.is_model_ready("diabetes", "7")
    assert triton.get_server_metadata().name == "model-server"
    model = triton.get_model_metadata("diabetes")
    assert (model.versions, model.platform) == (["1"], "sklearn")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs][:2] == [
        ("age", "FP64", [-1]),
        ("sex", "FP64", [-1]),
    ]
    assert [t.name for t in model.outputs] == ["predict", "contributions", "baseline"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tritonclient_infers_with_its_defaults(triton, served, dtype):
    rows = ROWS.astype(dtype)
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP64" if dtype == np.float64 else "FP32")
    tensor.set_data_from_numpy(rows)
    result = triton.infer("diabetes", [tensor], request_id="req-9")
    np.testing.assert_array_equal(result.as_numpy("predict"), served.model.predict(rows.astype(np.float64)))
    assert result.get_response().id == "req-9"


def test_tritonclient_requested_outputs_carry_their_parameters(triton, served):
    tensor = grpcclient.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS)
    outputs = [grpcclient.InferRequestedOutput("baseline"), grpcclient.InferRequestedOutput("contributions")]
    result = triton.infer("diabetes", [tensor], outputs=outputs)
    assert [output.name for output in result.get_response().outputs] == ["baseline", "contributions"]
    contributions, baseline = result.as_numpy("contributions"), result.as_numpy("baseline")
    assert contributions.shape == (len(ROWS), 10)
    # The explanation is exact: baseline plus contributions is the prediction.
    np.testing.assert_allclose(baseline + contributions.sum(axis=1), served.model.predict(ROWS), rtol=1e-9)
    parameters = result.get_output("baseline").parameters
    assert parameters["explains"].string_param == "predict"
    assert "columns" in result.get_output("contributions").parameters


def test_tritonclient_sees_refusals_as_status_codes_with_the_rest_message(triton, server):
    tensor = grpcclient.InferInput("input-0", [1, 3], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 3)))
    with pytest.raises(InferenceServerException) as refused:
        triton.infer("diabetes", [tensor])
    rest = requests.post(
        f"{server.url}/v2/models/diabetes/infer",
        json={"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [0, 0, 0]}]},
        timeout=5,
    )
    assert rest.status_code == 422
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert refused.value.message() == rest.json()["error"]
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("unknown", [tensor])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "model 'unknown' is not served here" in unknown.value.message()


# ---- typed contents, BYTES columns, the protocol's structure -------------------------------------------


def test_typed_contents_with_bytes_columns_answer_as_scikit_learn(start_server, penguins_dir):
    import pandas as pd

    env = grpc_env(penguins_dir)
    server = start_server(env)
    loaded = artifact.load(penguins_dir)
    frame = pd.DataFrame({c.name: [c.example, c.example] for c in loaded.signature.columns})
    request = messages.ModelInferRequest(model_name=loaded.name, id="typed")
    for column in loaded.signature.columns:
        tensor = request.inputs.add(name=column.name, datatype=column.datatype, shape=[2])
        if column.datatype == "BYTES":
            tensor.contents.bytes_contents.extend([str(column.example).encode()] * 2)
        else:
            tensor.contents.fp64_contents.extend([float(column.example)] * 2)
    request.outputs.add(name="predict_proba")
    with grpc.insecure_channel(f"127.0.0.1:{env['MODEL_SERVER_GRPC_PORT']}") as channel:
        response, trailing = Call(channel, INFER)(request, metadata=(("x-request-id", "abc-123"),))
        assert trailing["x-request-id"] == "abc-123"
        output = response.outputs[0]
        assert (output.name, output.datatype, list(output.shape)) == ("predict_proba", "FP64", [2, 3])
        values = np.frombuffer(response.raw_output_contents[0], dtype="<f8").reshape(2, 3)
        np.testing.assert_allclose(values, loaded.model.predict_proba(frame), rtol=1e-12)
        assert output.parameters["classes"].string_param == '["Adelie","Chinstrap","Gentoo"]'
        assert response.id == "typed"
        # A string where a number goes is refused naming the column, as over REST.
        island = next(c for c in loaded.signature.columns if c.datatype == "BYTES")
        bad = messages.ModelInferRequest()
        bad.CopyFrom(request)
        wrong = next(t for t in bad.inputs if t.name == island.name)
        wrong.contents.Clear()
        wrong.contents.fp64_contents.extend([1.0, 2.0])
        code, message = refusal(Call(channel, INFER), bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"input '{island.name}' is BYTES: its values go in contents.bytes_contents" in message
    assert server.stop() == 0


def test_malformed_messages_and_structure_are_invalid_argument_never_internal(channel):
    infer = Call(channel, INFER)
    good = messages.ModelInferRequest(model_name="diabetes", raw_input_contents=[ROWS[:1].astype("<f8").tobytes()])
    good.inputs.add(name="input-0", datatype="FP64", shape=[1, 10])
    response, _ = infer(good)  # the positive control: this one is served
    assert response.outputs[0].name == "predict"
    cases = {
        "not protobuf": (b"\xff\xff\xff", "not a valid inference.ModelInferRequest message"),
        "no inputs": (messages.ModelInferRequest(model_name="diabetes").SerializeToString(), "non-empty list"),
    }
    for what, (raw, message) in cases.items():
        code, details = refusal(infer, raw=raw)
        assert (code, message in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), (what, code, details)
    two_raw = messages.ModelInferRequest()
    two_raw.CopyFrom(good)
    two_raw.raw_input_contents.append(b"")
    assert refusal(infer, two_raw) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents has 2 entries for 1 inputs: one per input",
    )
    short = messages.ModelInferRequest()
    short.CopyFrom(good)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-8]
    code, details = refusal(infer, short)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "binary data is 72 bytes" in details


def test_a_message_over_the_body_limit_is_resource_exhausted(start_server, artifact_dir):
    env = grpc_env(artifact_dir, MODEL_SERVER_MAX_BODY_BYTES="4096")
    start_server(env)
    with grpc.insecure_channel(f"127.0.0.1:{env['MODEL_SERVER_GRPC_PORT']}") as channel:
        infer = Call(channel, INFER)
        rows = np.zeros((60, 10))
        request = messages.ModelInferRequest(model_name="diabetes", raw_input_contents=[rows.tobytes()])
        request.inputs.add(name="input-0", datatype="FP64", shape=[60, 10])
        assert refusal(infer, request)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # 4800 bytes of values: over 4096
        del request.raw_input_contents[:]
        request.raw_input_contents.append(rows[:20].tobytes())
        request.inputs[0].shape[:] = [20, 10]
        assert infer(request)[0].outputs[0].shape == [20]


# ---- readiness and health --------------------------------------------------------------------------------


def test_not_ready_is_unavailable_with_the_rest_message_and_health_says_not_serving(start_server, tmp_path):
    env = grpc_env(tmp_path / "missing")
    server = start_server(env)
    with grpc.insecure_channel(f"127.0.0.1:{env['MODEL_SERVER_GRPC_PORT']}") as channel:
        request = one_row_request()
        code, details = refusal(Call(channel, INFER), request)
        rest = requests.post(f"{server.url}/v2/models/diabetes/infer", json={"inputs": []}, timeout=5)
        assert (code, details) == (grpc.StatusCode.UNAVAILABLE, rest.json()["error"])
        assert rest.status_code == 503
        check = Call(channel, "/grpc.health.v1.Health/Check")
        request_class = check.request_class
        assert check(request_class(service=""))[0].status == 2  # NOT_SERVING: readiness
        assert check(request_class(service="readiness"))[0].status == 2
        assert check(request_class(service="liveness"))[0].status == 1  # SERVING: the process answers
        assert refusal(check, request_class(service="nope"))[0] == grpc.StatusCode.NOT_FOUND


def test_health_is_serving_once_the_model_is_loaded(channel):
    check = Call(channel, "/grpc.health.v1.Health/Check")
    for service in ("", "readiness", "inference.GRPCInferenceService", "liveness"):
        assert check(check.request_class(service=service))[0].status == 1, service


def watch(channel: grpc.Channel, service: str, timeout: float = 30.0) -> Any:
    """A grpc.health.v1 Watch stream of ``service``: iterate it for HealthCheckResponse messages."""
    request_class, response_class = messages.methods(messages.HEALTH_SERVICE)["Watch"]
    stream = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    return stream(request_class(service=service), timeout=timeout)


def test_health_watch_streams_the_status_then_not_serving_and_its_end_when_the_server_stops(server, channel):
    # The standard's Watch (gRPC's client-side health checking): the status at once; an unknown service is
    # SERVICE_UNKNOWN on a stream that stays open; on SIGTERM every stream says NOT_SERVING and ends, and the
    # server stops at once rather than at its graceful timeout (an open stream would otherwise hold the drain).
    ready, unknown = watch(channel, ""), watch(channel, "nope")
    assert next(ready).status == 1  # SERVING
    assert next(unknown).status == 3  # SERVICE_UNKNOWN, not an error
    check = Call(channel, "/grpc.health.v1.Health/Check")
    assert check(check.request_class())[0].status == 1  # beside open streams, calls are answered
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert [message.status for message in ready] == [2]  # NOT_SERVING, then the end of the stream
    assert ready.code() == grpc.StatusCode.OK
    assert [message.status for message in unknown] == [2]
    server.process.wait(15)
    assert time.monotonic() - started < 5, "an open Watch held the drain"


def test_health_watches_take_at_most_a_quarter_of_a_workers_calls_and_predictions_still_answer(
    start_server, artifact_dir
):
    env = grpc_env(artifact_dir, MODEL_SERVER_WORKER_CONNECTIONS="8", MODEL_SERVER_WORKERS="1")
    start_server(env)
    with grpc.insecure_channel(f"127.0.0.1:{env['MODEL_SERVER_GRPC_PORT']}") as channel:
        streams = [watch(channel, "") for _ in range(2)]  # 8 // 4
        assert [next(stream).status for stream in streams] == [1, 1]
        code, details = refusal(lambda: next(watch(channel, "liveness")))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already streams 2 health watches" in details
        request = one_row_request()
        assert Call(channel, INFER)(request)[0].outputs[0].name == "predict"
        streams[0].cancel()  # a cancelled stream gives its place back
        wait_for(lambda: _watch_opens(channel), "a place was not given back after a cancel")


def _watch_opens(channel: grpc.Channel) -> bool:
    stream = watch(channel, "liveness")
    try:
        return bool(next(stream).status == 1)
    except grpc.RpcError:
        return False
    finally:
        stream.cancel()


# ---- auth, metrics -----------------------------------------------------------------------------------------


def test_bearer_tokens_guard_grpc_as_they_guard_rest(start_server, artifact_dir, tmp_path):
    made = write_tokens(tmp_path / "tokens", ("scorer", "diabetes"), ("other", "penguins"))
    env = grpc_env(artifact_dir, MODEL_SERVER_AUTH_TOKENS_FILE=str(tmp_path / "tokens"))
    start_server(env)
    request = one_row_request()
    with grpc.insecure_channel(f"127.0.0.1:{env['MODEL_SERVER_GRPC_PORT']}") as channel:
        infer = Call(channel, INFER)
        code, details = refusal(infer, request)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "needs a bearer token" in details
        assert (
            refusal(infer, request, metadata=(("authorization", "Bearer nope"),))[0] == grpc.StatusCode.UNAUTHENTICATED
        )
        code, details = refusal(infer, request, metadata=(("authorization", f"Bearer {made['other']}"),))
        assert (code, details) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "forbidden: caller 'other' may not use model 'diabetes'",
        )
        response, _ = infer(request, metadata=(("authorization", f"Bearer {made['scorer']}"),))
        assert response.outputs[0].name == "predict"
        # Health stays open: kubelet's gRPC probes carry no credentials. Server metadata does not.
        check = Call(channel, "/grpc.health.v1.Health/Check")
        assert check(check.request_class())[0].status == 1
        metadata = Call(channel, "/inference.GRPCInferenceService/ServerMetadata")
        assert refusal(metadata)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_calls_are_counted_by_protocol_and_route(server, triton):
    tensor = grpcclient.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS)
    for _ in range(3):
        triton.infer("diabetes", [tensor])
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    assert f'model_server_predicted_rows_total{{protocol="grpc"}} {3.0 * len(ROWS)}' in text
    assert f'route="{INFER}",status="200"}} 3.0' in text

    # and a canary's judgement counts them as predictions like any other protocol's (core/outcomes.py); the
    # worker that answered writes its rings within FLUSH_INTERVAL_S, and another worker may answer the GET
    def judged() -> tuple[int, int]:
        judgement = requests.get(f"{server.url}/v2/models/diabetes/judgement", timeout=5).json()
        return judgement["requests"], judgement["predictions"]["rows"]

    wait_for(lambda: judged() == (3, 3 * len(ROWS)), "3 gRPC predictions in the judgement", timeout=5)


# ---- TLS -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_grpc_over_mutual_tls_knows_certificate_callers_and_refuses_strangers(start_server, artifact_dir, tmp_path):
    ca = CA(tmp_path / "pki")
    pair = ca.issue("server", hosts=("127.0.0.1", "localhost"))
    secret = SecretDir(tmp_path / "tls", {"tls.crt": pair.cert.read_bytes(), "tls.key": pair.key.read_bytes()})
    client = ca.issue("scorer.team-a", client=True)
    env = grpc_env(
        artifact_dir,
        MODEL_SERVER_TLS_CERT_FILE=secret.path("tls.crt"),
        MODEL_SERVER_TLS_KEY_FILE=secret.path("tls.key"),
        MODEL_SERVER_TLS_CLIENT_CA_FILE=str(ca.cert),
        MODEL_SERVER_AUTH_CLIENT_CERTIFICATES="scorer.team-a=diabetes",
    )
    start_server(env, client={"verify": str(ca.cert), "cert": (str(client.cert), str(client.key))})
    target = f"127.0.0.1:{env['MODEL_SERVER_GRPC_PORT']}"
    request = one_row_request()

    def credentials(issued=None):
        return grpc.ssl_channel_credentials(
            ca.cert.read_bytes(),
            issued.key.read_bytes() if issued else None,
            issued.cert.read_bytes() if issued else None,
        )

    with grpc.secure_channel(target, credentials(client)) as channel:
        response, _ = Call(channel, INFER)(request)  # the certificate names a caller with the model's scope
        assert response.outputs[0].name == "predict"
    for who in (None, CA(tmp_path / "other").issue("scorer.team-a", client=True)):
        with grpc.secure_channel(target, credentials(who)) as channel:
            assert refusal(Call(channel, INFER), request)[0] == grpc.StatusCode.UNAVAILABLE  # no handshake
    with grpc.insecure_channel(target) as channel:
        assert refusal(Call(channel, INFER), request)[0] == grpc.StatusCode.UNAVAILABLE


# ---- the drain ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_forest_dir(tmp_path_factory) -> Path:
    """A forest: a model the server batches (a linear model is answered alone, never waiting for company)."""
    from model_server import train

    model, metadata = train.train("penguins", "random-forest", name="forest", trees=10)
    directory = tmp_path_factory.mktemp("forest") / "forest"
    artifact.save(model, metadata, directory)
    return directory


@pytest.mark.slow
def test_sigterm_answers_grpc_calls_still_waiting_for_company_and_exits_at_once(start_server, small_forest_dir):
    # Eight calls wait out a 400 ms batch delay when SIGTERM arrives. Each waits in a greenlet of the worker
    # while the worker's drain waits for gRPC's stop: that wait must leave gevent's loop running (a native
    # wait there held every call until the graceful timeout cancelled them).
    env = grpc_env(
        small_forest_dir, MODEL_SERVER_WORKERS="1", MODEL_SERVER_MAX_BATCH_SIZE="64",
        MODEL_SERVER_MAX_BATCH_DELAY_MS="400", MODEL_SERVER_GRACEFUL_TIMEOUT="10",
    )  # fmt: skip
    server = start_server(env)
    target = f"127.0.0.1:{env['MODEL_SERVER_GRPC_PORT']}"
    row = ["Biscoe", 45.1, 17.0, 200.0, 4200.0, "male"]
    with grpc.insecure_channel(target) as channel:
        metadata = Call(channel, rpc_client.MODEL_METADATA)
        described = metadata(metadata.request_class(name="forest"))[0]
        inputs = [{"name": tensor.name, "datatype": tensor.datatype} for tensor in described.inputs]
        request = rpc_client.infer_request("forest", inputs, [row])
        assert Call(channel, INFER)(request)[0].outputs  # the positive control: the call is answered at all
        outcomes: list[str] = []

        def call() -> None:
            try:
                Call(channel, INFER)(request, timeout=15)
                outcomes.append("OK")
            except grpc.RpcError as exc:
                outcomes.append(str(exc.code()))

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.15)  # the calls are queued, waiting for company
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(20)
    assert outcomes == ["OK"] * 8, outcomes
    assert server.process.wait(15) == 0
    assert time.monotonic() - started < 5, "the drain waited for its graceful timeout"


# ---- several workers on one port ---------------------------------------------------------------------------


@pytest.mark.slow
def test_several_workers_share_the_port_and_many_connections_all_get_right_answers(start_server, artifact_dir, served):
    env = grpc_env(artifact_dir, MODEL_SERVER_WORKERS="3")
    server = start_server(env)
    target = f"127.0.0.1:{env['MODEL_SERVER_GRPC_PORT']}"
    expected = served.model.predict(ROWS)
    request = messages.ModelInferRequest(model_name="diabetes", raw_input_contents=[ROWS.astype("<f8").tobytes()])
    request.inputs.add(name="input-0", datatype="FP64", shape=list(ROWS.shape))
    outcomes: list[str] = []

    def connection() -> None:
        # A channel of its own per thread, and no subchannel sharing: each is its own TCP connection.
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            infer = Call(channel, INFER)
            for _ in range(25):
                try:
                    response, _ = infer(request)
                    values = np.frombuffer(response.raw_output_contents[0], dtype="<f8")
                    outcomes.append("ok" if np.array_equal(values, expected) else "wrong")
                except grpc.RpcError as exc:
                    outcomes.append(str(exc.code()))

    threads = [threading.Thread(target=connection) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes.count("ok") == 24 * 25, {o: outcomes.count(o) for o in set(outcomes)}
    logs = server.logs()
    serving = {line for line in logs.splitlines() if '"gRPC serving"' in line}
    assert len(serving) == 3, logs[-3000:]  # every worker, its own server on the shared port
    assert server.stop(signal.SIGTERM) == 0
