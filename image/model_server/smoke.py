"""End-to-end check of a running server: what the chart's `helm test` Pod runs.

    python -m model_server.smoke --url http[s]://SERVICE:PORT [--grpc SERVICE:GRPC_PORT]
        [--expect-from ARTIFACT_DIR] [--ca-file CA] [--token-file TOKEN] [--cert-file CERT --key-file KEY]

Over HTTPS it verifies the server's certificate against --ca-file; with --token-file it sends that bearer
token (a file: a ServiceAccount's projected token is rotated by kubelet, so it is read for each call);
with --cert-file/--key-file it presents a client certificate (mutual TLS).

Passes only if the server is ready, names a model, and answers the same rows on V1 and V2 with
the same values. The rows are built from the model's own signature (model metadata): each
column's typical value, and a second row with every nullable column null. With --expect-from,
the answers must equal what that artifact gives through the server's own runner. With --grpc, the gRPC
binding must report itself serving (grpc.health.v1, service ``readiness``), describe the same inputs and
answer the same rows with the same values, over the same TLS and token. Uses only the standard library
plus what the image holds (the server package, grpcio), so it runs from the serving image itself.
"""

from __future__ import annotations

import argparse
import json
import math
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SmokeFailure(Exception):
    pass


@dataclass(frozen=True)
class Credentials:
    """How to reach a secured server: the CA to verify it with, a bearer token file, a client certificate."""

    ca_file: str | None = None
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext | None:
        if not (self.ca_file or self.cert_file):
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def grpc_channel(self, target: str) -> Any:
        import grpc  # only for --grpc: the REST check needs nothing beyond the standard library

        if not (self.ca_file or self.cert_file):
            return grpc.insecure_channel(target)
        root = Path(self.ca_file).read_bytes() if self.ca_file else None
        key = Path(self.key_file).read_bytes() if self.key_file else None
        chain = Path(self.cert_file).read_bytes() if self.cert_file else None
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root, key, chain))

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        token = self.headers().get("Authorization")
        return (("authorization", token),) if token else ()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token_file:
            headers["Authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
        return headers


CREDENTIALS = Credentials()  # set by main() from its arguments


def call(url: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    # --url is the release's own Service URL, set by the chart.
    request = urllib.request.Request(url, data=data, headers=CREDENTIALS.headers())  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=CREDENTIALS.context()) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SmokeFailure(f"{url} answered {exc.code}: {exc.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SmokeFailure(f"{url} unreachable: {exc}") from None


def rows_from_metadata(meta: dict[str, Any]) -> list[list[Any]]:
    """The example row, and the same row with every nullable column null (when there is one)."""
    inputs = meta["inputs"]
    example = [tensor["parameters"]["example"] for tensor in inputs]
    with_nulls = [
        None if tensor["parameters"]["nullable"] else value for tensor, value in zip(inputs, example, strict=True)
    ]
    return [example, with_nulls] if with_nulls != example else [example]


def same(a: Any, b: Any) -> bool:
    """Equal values, NaN-free: floats compared exactly (the same process computes both)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and not math.isfinite(a):
        return False
    return bool(a == b)


def expected_from(directory: Path, rows: list[list[Any]], output: str) -> list[Any]:
    """What the artifact gives for ``rows`` through the server's own checks, codecs and runner."""
    from .config import Settings
    from .core import artifact, columns
    from .core.runner import ModelRunner

    settings = Settings.from_env()
    loaded = artifact.load(directory, trust_pickle=settings.trust_pickle, trusted_types=settings.trusted_types)
    runner = ModelRunner(loaded.model, loaded.signature)
    batch = columns.Batch(rows=len(rows), columns=columns.columns_from_rows(rows, loaded.signature, "rows"))
    values: list[Any] = runner.run(batch, (output,))[output].tolist()
    return values


def wait_ready(base: str, seconds: float) -> None:
    """Readiness within ``seconds``: a new pod's network (and a NetworkPolicy enforcer admitting its
    address) may lag its start by a moment, so an unreachable or not-yet-ready server is asked again."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            call(f"{base}/v2/health/ready", timeout=5)
            return
        except SmokeFailure:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1)


def v2_infer(base: str, name: str, meta: dict[str, Any], rows: list[list[Any]], output: str) -> list[Any]:
    body = {
        "inputs": [
            {
                "name": tensor["name"],
                "shape": [len(rows)],
                "datatype": tensor["datatype"],
                "data": [row[i] for row in rows],
            }
            for i, tensor in enumerate(meta["inputs"])
        ],
        "outputs": [{"name": output}],
    }
    answer: list[Any] = call(f"{base}/v2/models/{name}/infer", body)["outputs"][0]["data"]
    return answer


def check_grpc(target: str, name: str, meta: dict[str, Any], rows: list[list[Any]], output: str, v2: list[Any]) -> str:
    """The gRPC binding at ``target`` serves, describes and answers ``rows`` as V2 did (``v2``)."""
    import grpc

    from .transport.rpc import client

    with CREDENTIALS.grpc_channel(target) as channel:
        metadata = CREDENTIALS.grpc_metadata()
        try:
            health, _ = client.Method(channel, client.HEALTH)(
                client.Method(channel, client.HEALTH).request_class(service="readiness"), metadata=metadata
            )
            described, _ = client.Method(channel, client.MODEL_METADATA)(
                client.Method(channel, client.MODEL_METADATA).request_class(name=name), metadata=metadata
            )
            request = client.infer_request(name, meta["inputs"], rows, outputs=(output,))
            answer, _ = client.Method(channel, client.INFER)(request, metadata=metadata)
        except grpc.RpcError as exc:
            raise SmokeFailure(f"gRPC {target} answered {exc.code().name}: {exc.details()}") from None
    if health.status != health.SERVING:
        raise SmokeFailure(f"gRPC {target} health says {health.ServingStatus.Name(health.status)} for readiness")
    names = [tensor.name for tensor in described.inputs]
    if names != [tensor["name"] for tensor in meta["inputs"]]:
        raise SmokeFailure(f"gRPC {target} describes inputs {names}, REST {[t['name'] for t in meta['inputs']]}")
    values = client.outputs(answer).get(output)
    if not same(values, v2):
        raise SmokeFailure(f"gRPC {target} answered {output} {values}, V2 {v2}")
    return f"; gRPC {target} answered the same"


def grpc_rows(meta: dict[str, Any], rows: list[list[Any]]) -> list[list[Any]]:
    """The rows the gRPC binding's typed fields can carry: a null only in a float column (NaN)."""
    floats = [tensor["datatype"] in ("FP32", "FP64") for tensor in meta["inputs"]]
    return [row for row in rows if all(value is not None or f for value, f in zip(row, floats, strict=True))]


def run(base: str, expect_from: Path | None, wait: float = 30, grpc_target: str | None = None) -> str:
    base = base.rstrip("/")
    wait_ready(base, wait)
    models = call(f"{base}/v1/models").get("models") or []
    if len(models) != 1:
        raise SmokeFailure(f"expected one served model, /v1/models lists {models}")
    name = models[0]
    meta = call(f"{base}/v2/models/{name}")
    rows = rows_from_metadata(meta)
    output = meta["parameters"]["default_outputs"][0]
    v1 = call(f"{base}/v1/models/{name}:predict", {"instances": rows})["predictions"]
    v2 = v2_infer(base, name, meta, rows, output)
    if len(v1) != len(rows):
        raise SmokeFailure(f"V1 answered {v1!r} for {len(rows)} rows")
    flat_v1 = [value for row in v1 for value in row] if v1 and isinstance(v1[0], list) else v1
    if not same(flat_v1, v2):
        raise SmokeFailure(f"V1 {v1} and V2 {v2} disagree")
    if expect_from is not None:
        expected = expected_from(expect_from, rows, output)
        if not same(v1, expected):
            raise SmokeFailure(f"served {output} {v1} differs from {expect_from}'s {expected}")
    also = ""
    if grpc_target:
        carried = grpc_rows(meta, rows)
        also = check_grpc(
            grpc_target,
            name,
            meta,
            carried,
            output,
            v2 if carried == rows else v2_infer(base, name, meta, carried, output),
        )
    return (
        f"ok: model {name} v{meta.get('versions', ['?'])[0]} answered {len(rows)} rows identically on V1 and V2{also}"
    )


def add_credential_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-file", help="CA certificate to verify an https server with")
    parser.add_argument("--token-file", help="file holding a bearer token to send (read for each request)")
    parser.add_argument("--cert-file", help="client certificate to present (mutual TLS)")
    parser.add_argument("--key-file", help="the client certificate's key")


def credentials_from(args: argparse.Namespace) -> Credentials:
    return Credentials(args.ca_file, args.token_file, args.cert_file, args.key_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoke", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of the server")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="also check the gRPC binding there")
    parser.add_argument("--expect-from", type=Path, help="artifact directory whose answers must match")
    parser.add_argument("--wait", type=float, default=30, help="seconds to wait for readiness (default 30)")
    add_credential_arguments(parser)
    args = parser.parse_args(argv)
    global CREDENTIALS
    CREDENTIALS = credentials_from(args)
    try:
        print(run(args.url, args.expect_from, args.wait, args.grpc))
    except Exception as exc:  # a failed check, an odd answer or an unloadable artifact: one line, exit 1
        print(f"smoke: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
