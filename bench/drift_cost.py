"""What drift accounting costs a worker per request, measured in-process (``scripts/bench`` runs it).

A wrk run's server CPU per request varies by ±10 % or more between rounds on a shared 2-core machine,
more than drift accounting costs, so comparing ``ours`` with ``ours-no-drift`` cannot resolve it.
This measures the accounting itself: the Batch a request decodes to is noted in the worker's Window
(``observe``, on every request) and every ``per_publish`` requests the noted rows are binned, counted
and written to the shared gauge (``publish``, on a 0.1 s timer in the server, so at N requests/s per
worker it covers N/10 requests). Run in its own process, with its own PROMETHEUS_MULTIPROC_DIR:

    python -m bench.drift_cost MODEL_DIR ROWS PER_PUBLISH   ->  µs of CPU per request, on stdout
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model_server.core.columns import Batch
    from model_server.core.signature import Signature


def batch_for(directory: Path, rows: int) -> tuple[Signature, Batch]:
    """The model's signature and the Batch the server decodes the benchmark's request of ``rows`` rows to."""
    import json

    from model_server.core import artifact
    from model_server.core.signature import read as read_signature
    from model_server.transport import v1

    from bench.harness import body

    signature = read_signature(artifact.read_metadata(directory), str(directory))
    kind = "pipeline" if any(c.datatype == "BYTES" for c in signature.columns) else "linear"
    return signature, v1.parse_request(json.loads(body("v1", rows, kind)), signature, max_rows=rows)


def cost_us(directory: Path, rows: int, per_publish: int, publishes: int = 200) -> float:
    """Median over five repeats of the CPU µs per request that observe + amortised publish take."""
    from model_server.core import drift

    signature, batch = batch_for(directory, rows)
    window = drift.Window(signature, 1000)
    window.publish()  # the first publish writes every bin: not what a running server pays
    samples = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(publishes):
            for _ in range(per_publish):
                window._pending.append(batch)  # observe() minus its timer, which the server arms once per publish
            window.publish()
        samples.append((time.process_time() - started) / (publishes * per_publish) * 1e6)
    return sorted(samples)[2]


if __name__ == "__main__":
    model_dir, rows, per_publish = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(f"{cost_us(model_dir, rows, per_publish):.2f}")
