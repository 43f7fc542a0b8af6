"""End-to-end check of a running server: what the chart's `helm test` Pod runs.

    python -m model_server.smoke --url http://SERVICE:PORT [--expect-from ARTIFACT_DIR]

Passes only if the server is ready, names a model, and answers one prediction per protocol with
the same finite numbers; with --expect-from, the numbers must equal that artifact's own predict().
Uses only the standard library plus numpy, so it runs from the serving image itself.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROWS = [
    [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017],
    [-0.001, -0.044, -0.051, -0.026, -0.008, -0.019, 0.074, -0.039, -0.068, -0.092],
]


class SmokeFailure(Exception):
    pass


def call(url: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    # --url is the release's own Service URL, set by the chart: http by construction.
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SmokeFailure(f"{url} answered {exc.code}: {exc.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SmokeFailure(f"{url} unreachable: {exc}") from None


def run(base: str, expect_from: Path | None) -> str:
    base = base.rstrip("/")
    call(f"{base}/v2/health/ready")
    models = call(f"{base}/v1/models").get("models") or []
    if len(models) != 1:
        raise SmokeFailure(f"expected one served model, /v1/models lists {models}")
    name = models[0]
    meta = call(f"{base}/v2/models/{name}")
    width = meta["inputs"][0]["shape"][-1]
    rows = [(row * ((width // len(row)) + 1))[:width] for row in ROWS]
    v1 = call(f"{base}/v1/models/{name}:predict", {"instances": rows})["predictions"]
    flat = [value for row in rows for value in row]
    v2_body = {"inputs": [{"name": "input-0", "shape": [len(rows), width], "datatype": "FP64", "data": flat}]}
    v2 = call(f"{base}/v2/models/{name}/infer", v2_body)["outputs"][0]["data"]
    if len(v1) != len(rows) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in v1):
        raise SmokeFailure(f"V1 answered {v1!r} for {len(rows)} rows")
    if v1 != v2:
        raise SmokeFailure(f"V1 {v1} and V2 {v2} disagree")
    if expect_from is not None:
        from . import artifact

        expected = artifact.load(expect_from).model.predict(rows).tolist()
        if expected != v1:
            raise SmokeFailure(f"served predictions {v1} differ from {expect_from}'s {expected}")
    return f"ok: model {name} v{meta.get('versions', ['?'])[0]} answered {len(rows)} rows identically on V1 and V2"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of the server")
    parser.add_argument("--expect-from", type=Path, help="artifact directory whose predictions must match")
    args = parser.parse_args(argv)
    try:
        print(run(args.url, args.expect_from))
    except (SmokeFailure, KeyError, IndexError, TypeError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
