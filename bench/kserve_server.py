"""KServe's model server (PyPI kserve) serving the same LinearRegression, for scripts/bench.

Run with the peer virtualenv: .venv-bench/kserve/bin/python -m bench.kserve_server --port P --workers N
KServe binds 0.0.0.0 unconditionally; the benchmark forces 127.0.0.1. Per-request latency logging is off.
"""

import argparse
import uuid

import numpy as np
import uvicorn

_config_init = uvicorn.Config.__init__


def _loopback_only(self, *args, **kwargs):
    kwargs["host"] = "127.0.0.1"
    _config_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback_only

import kserve  # noqa: E402 - after the bind patch
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402
from model_server.train import train  # noqa: E402 - same data, split and estimator as the artifact


class Diabetes(kserve.Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.model = None
        self.load()

    def load(self) -> bool:
        self.model, _ = train()
        self.ready = True
        return True

    def predict(self, payload, headers=None):
        if isinstance(payload, InferRequest):
            predictions = self.model.predict(payload.inputs[0].as_numpy())
            output = InferOutput(
                name="predict", shape=list(predictions.shape), datatype="FP64", data=predictions.tolist()
            )
            return InferResponse(
                model_name=self.name, infer_outputs=[output], response_id=payload.id or uuid.uuid4().hex
            )
        return {"predictions": self.model.predict(np.asarray(payload["instances"])).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args, _ = parser.parse_known_args()
    kserve.ModelServer(
        http_port=args.port,
        workers=args.workers,
        enable_grpc=False,
        enable_latency_logging=False,
        enable_docs_url=False,
    ).start([Diabetes("diabetes")])


if __name__ == "__main__":
    main()
