"""Seldon MLServer with its scikit-learn runtime serving the benchmark's model, for scripts/bench.

Run by the peer's own virtualenv, as a script (it imports only the standard library):
    .venv-bench/mlserver/bin/python bench/peers/mlserver_server.py --port P --grpc-port G --metrics-port M
        --workers N --model-file FILE.joblib --name NAME
mlserver-sklearn loads the joblib file (the same fitted model the other servers serve) and decodes
requests with MLServer's codecs: NumPy by default, pandas with ``parameters.content_type: "pd"``.
MLServer speaks V2 only; it has no KServe V1 endpoint.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="folder for the settings (default: a new temp dir)")
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--max-batch-size", type=int, default=0, help="MLServer's adaptive batching: most requests")
    parser.add_argument("--max-batch-time", type=float, default=0.0, help="...and how long to wait for them, s")
    args, _ = parser.parse_known_args()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="mlserver-"))
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": args.port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        "metrics_dir": str(folder / "metrics"),  # MLServer's default is .metrics/ in the working directory
        "parallel_workers": args.workers,
        "debug": False,
    }
    model_settings = {
        "name": args.name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(args.model_file)},
        **(
            {"max_batch_size": args.max_batch_size, "max_batch_time": args.max_batch_time}
            if args.max_batch_size > 1
            else {}
        ),
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    mlserver = Path(sys.executable).parent / "mlserver"
    os.execv(str(mlserver), [str(mlserver), "start", str(folder)])  # noqa: S606 - fixed argv, no shell


if __name__ == "__main__":
    main()
