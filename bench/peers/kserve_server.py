"""KServe's model server (PyPI kserve) serving the benchmark's model as KServe's sklearn server does.

Run by the peer's own virtualenv, as a script (it imports only what that virtualenv installs):
    .venv-bench/kserve/bin/python bench/peers/kserve_server.py --port P --workers N --model-file FILE.joblib --name NAME
The request and response handling is KServe's own (``get_predict_input`` / ``get_predict_response``,
what kserve's sklearnserver calls): V1 rows as arrays, or objects as a DataFrame; V2 the first
tensor as an array, or with ``parameters.content_type: "pd"`` every tensor as a DataFrame column.
KServe binds 0.0.0.0 (gRPC: [::]) unconditionally; the benchmark forces 127.0.0.1. Per-request latency logging is off.
"""

import argparse

import joblib
import uvicorn

_config_init = uvicorn.Config.__init__


def _loopback_only(self, *args, **kwargs):
    kwargs["host"] = "127.0.0.1"
    _config_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback_only

# Its gRPC server listens on [::] unconditionally too: loopback only, as above.
from grpc.aio import _server as _aio_server  # noqa: E402 - the patch before kserve builds its server

_add_insecure_port = _aio_server.Server.add_insecure_port


def _grpc_loopback_only(self, address):
    return _add_insecure_port(self, address.replace("[::]", "127.0.0.1", 1))


_aio_server.Server.add_insecure_port = _grpc_loopback_only

import kserve  # noqa: E402 - after the bind patch
from kserve.utils.utils import get_predict_input, get_predict_response  # noqa: E402


class SKLearn(kserve.Model):
    def __init__(self, name: str, model_file: str) -> None:
        super().__init__(name)
        self.model = joblib.load(model_file)
        self.ready = True

    def predict(self, payload, headers=None):
        return get_predict_response(payload, self.model.predict(get_predict_input(payload)), self.name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--grpc-port", type=int, default=0, help="serve KServe's gRPC binding too (0: off)")
    args, _ = parser.parse_known_args()
    kserve.ModelServer(
        http_port=args.port,
        workers=args.workers,
        enable_grpc=bool(args.grpc_port),
        **({"grpc_port": args.grpc_port} if args.grpc_port else {}),
        enable_latency_logging=False,
        enable_docs_url=False,
    ).start([SKLearn(args.name, args.model_file)])


if __name__ == "__main__":
    main()
