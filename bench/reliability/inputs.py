"""Hostile input: a corpus of parser-breaking bodies and schemathesis over the OpenAPI document."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import requests

from bench.reliability.lab import Lab, Result


def hostile_corpus(lab: Lab) -> Result:
    """Bodies built to break parsers: every one must get a 4xx, none a 5xx or a dead worker."""
    server = lab.server()
    json_type = {"Content-Type": "application/json"}
    corpus: dict[str, tuple[bytes, dict[str, str]]] = {
        "deep nesting (100 000 levels)": (b"[" * 100_000 + b"]" * 100_000, json_type),
        "huge integer": (b'{"instances": [[' + b"9" * 5000 + b"]]}", json_type),
        "huge float": (b'{"instances": [[1e999, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', json_type),
        "NaN literal": (b'{"instances": [[NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', json_type),
        "Infinity literal": (b'{"instances": [[Infinity, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', json_type),
        "strings for numbers": (b'{"instances": [["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"]]}', json_type),
        "10 MB of whitespace": (b" " * 10_000_000, json_type),
        "invalid UTF-8": (b'{"instances": "\xff\xfe"}', json_type),
        "text/plain": (b'{"instances": [[0,0,0,0,0,0,0,0,0,0]]}', {"Content-Type": "text/plain"}),
        "form encoded": (b"instances=1", {"Content-Type": "application/x-www-form-urlencoded"}),
        "duplicated keys": (b'{"instances": [[0,0,0,0,0,0,0,0,0,0]], "instances": 1}', json_type),
        "empty body": (b"", json_type),
        "null": (b"null", json_type),
        "V2 shape lies": (
            b'{"inputs": [{"name": "x", "shape": [1000000000, 10], "datatype": "FP64", "data": [1]}]}',
            json_type,
        ),
        "V2 binary size lies": (
            b'{"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", '
            b'"parameters": {"binary_data_size": 80}}]}',
            {**json_type, "Inference-Header-Content-Length": "100"},
        ),
    }
    answers: dict[str, int | str] = {}
    for name, (data, headers) in corpus.items():
        url = f"{server.base}/v2/models/diabetes/infer" if name.startswith("V2") else f"{server.base}/predict"
        try:
            answers[name] = requests.post(url, data=data, headers=headers, timeout=30).status_code
        except requests.ConnectionError as exc:
            answers[name] = f"connection error: {type(exc).__name__}"
    alive = requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
    bad = {name: code for name, code in answers.items() if not (isinstance(code, int) and 400 <= code < 500)}
    return Result("hostile bodies", not bad and alive, {**answers, "server still ready": alive})


def schemathesis_run(lab: Lab, examples: int = 300) -> Result:
    """schemathesis against the server's own /openapi.json: no 5xx, responses conform."""
    import subprocess

    server = lab.server()
    cli = Path(sys.executable).parent / "schemathesis"
    # positive_data_acceptance is left out: the schema cannot say that a tensor's shape must match
    # the model's 10 features, so schema-valid bodies are rightly refused with 422.
    result = subprocess.run(
        [str(cli), "run", f"{server.base}/openapi.json", "--checks", "all", "--exclude-checks",
         "positive_data_acceptance", "--max-examples", str(examples), "--workers", "1", "--no-color"],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    summary = [line for line in result.stdout.splitlines() if re.search(r"\d+ (passed|failed|errored)", line)]
    cases = re.search(r"(\d+) generated", result.stdout)
    failures = re.findall(r"^- (ST\d+ .+)$", result.stdout, re.MULTILINE)
    return Result(
        "schemathesis (every operation of /openapi.json)",
        result.returncode == 0,
        {
            "max examples per operation": examples,
            "test cases generated": int(cases.group(1)) if cases else "see output",
            "summary": summary[-1].strip() if summary else result.stdout[-300:],
            **({"failures": sorted(set(failures))} if failures else {}),
        },
    )
