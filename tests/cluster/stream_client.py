"""A client pod's program: real predictions on keep-alive connections, for as long as a rollout takes.

Run inside the cluster by the serving image's python (``python3 -c <this file's text>``, the settings in
the STREAM_* environment variables), so it needs nothing but the standard library. Each of
STREAM_CONNECTIONS threads keeps one HTTP/1.1 connection open and POSTs a V2 inference built from the
served model's own metadata, one after another, until STREAM_SECONDS have passed or the file
STREAM_STOP exists. An answer with ``Connection: close`` (a draining pod) ends that connection after
its answer and the next request opens a new one: that is a reconnect, not a failure. A failure is a
request that got no complete answer, or an answer other than 200. It prints "streaming" once the first
prediction succeeded, then one JSON line: counts, the model versions that answered (and when, first
and last seen, seconds from the start), and the first failures.

STREAM_ROWS a JSON list of rows to send in turn instead of the example row; STREAM_RECONNECT_EVERY
requests per connection (a reconnect, counted as one, after each such run).
STREAM_URL the Service's base URL (http:// or https://); STREAM_CA_FILE the CA to verify https with;
STREAM_TOKEN_FILE a bearer token sent with every request; STREAM_CERT_FILE/STREAM_KEY_FILE a client
certificate.
"""

import http.client
import json
import os
import ssl
import threading
import time
import urllib.parse

URL = urllib.parse.urlsplit(os.environ["STREAM_URL"])
SECONDS = float(os.environ.get("STREAM_SECONDS", "60"))
CONNECTIONS = int(os.environ.get("STREAM_CONNECTIONS", "4"))
PAUSE = float(os.environ.get("STREAM_PAUSE", "0.01"))
STOP = os.environ.get("STREAM_STOP", "/tmp/stop")
# Requests per connection before it is closed and a new one opened (0: never), as proxies cap them: the
# Service then spreads connections over pods that started after the client did (a canary).
RECONNECT_EVERY = int(os.environ.get("STREAM_RECONNECT_EVERY", "0"))
TOKEN_FILE = os.environ.get("STREAM_TOKEN_FILE")


def tls_context():
    if URL.scheme != "https":
        return None
    context = ssl.create_default_context(cafile=os.environ.get("STREAM_CA_FILE"))
    if os.environ.get("STREAM_CERT_FILE"):
        context.load_cert_chain(os.environ["STREAM_CERT_FILE"], os.environ.get("STREAM_KEY_FILE"))
    return context


CONTEXT = tls_context()


def connect():
    port = URL.port or (443 if CONTEXT else 80)
    if CONTEXT is not None:
        return http.client.HTTPSConnection(URL.hostname, port, timeout=10, context=CONTEXT)
    return http.client.HTTPConnection(URL.hostname, port, timeout=10)


def headers():
    found = {"Content-Type": "application/json"}
    if TOKEN_FILE:
        with open(TOKEN_FILE) as handle:  # re-read each time: a rotated token is picked up
            found["Authorization"] = "Bearer " + handle.read().strip()
    return found


def get(connection, path):
    connection.request("GET", path, headers=headers())
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    return json.loads(body)


def request_body():
    """A V2 inference of the model's example row, from its own metadata; (path, body)."""
    deadline = time.monotonic() + 60
    while True:
        connection = connect()
        try:
            name = get(connection, "/v1/models")["models"][0]
            meta = get(connection, f"/v2/models/{name}")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            connection.close()
    inputs = [
        {"name": t["name"], "shape": [1], "datatype": t["datatype"], "data": [t["parameters"]["example"]]}
        for t in meta["inputs"]
    ]
    return f"/v2/models/{name}/infer", json.dumps({"inputs": inputs}).encode()


PATH, BODY = request_body()
# STREAM_ROWS: a JSON list of rows to send instead of the example row, one per request in turn (so the
# predictions have a distribution, as live traffic does).
ROWS = json.loads(os.environ.get("STREAM_ROWS") or "[]")
BODIES = [
    json.dumps({"inputs": [dict(t, data=[row[i]]) for i, t in enumerate(json.loads(BODY)["inputs"])]}).encode()
    for row in ROWS
] or [BODY]
STARTED = time.monotonic()
LOCK = threading.Lock()
counts = {"ok": 0, "failed": 0, "reconnects": 0}
versions = {}
failures = []


def note_version(version):
    now = round(time.monotonic() - STARTED, 1)
    with LOCK:
        first, _, n = versions.get(version, (now, now, 0))
        versions[version] = (first, now, n + 1)


def stream(offset):
    connection = None
    sent = offset
    while time.monotonic() - STARTED < SECONDS and not os.path.exists(STOP):
        if connection is None:
            connection = connect()
        try:
            connection.request("POST", PATH, body=BODIES[sent % len(BODIES)], headers=headers())
            sent += 1
            response = connection.getresponse()
            payload = response.read()
            closing = (response.getheader("Connection") or "").lower() == "close"
        except Exception as exc:
            with LOCK:
                counts["failed"] += 1
                failures.append(f"{time.monotonic() - STARTED:.1f} s: {type(exc).__name__}: {str(exc)[:120]}")
            connection.close()
            connection = None
            continue
        if response.status == 200:
            note_version(json.loads(payload)["model_version"])
            with LOCK:
                counts["ok"] += 1
        else:
            with LOCK:
                counts["failed"] += 1
                failures.append(f"{time.monotonic() - STARTED:.1f} s: {response.status} {payload[:120]!r}")
        if closing or (RECONNECT_EVERY and sent % RECONNECT_EVERY == 0):
            connection.close()
            connection = None
            with LOCK:
                counts["reconnects"] += 1
        time.sleep(PAUSE)
    if connection is not None:
        connection.close()


threads = [threading.Thread(target=stream, args=(index * 7919,)) for index in range(CONNECTIONS)]
for thread in threads:
    thread.start()
while not counts["ok"] and not counts["failed"] and time.monotonic() - STARTED < SECONDS:
    time.sleep(0.05)
print("streaming", flush=True)
for thread in threads:
    thread.join()
print(
    json.dumps(
        {
            **counts,
            "seconds": round(time.monotonic() - STARTED, 1),
            "versions": {v: {"first_s": f, "last_s": last, "answers": n} for v, (f, last, n) in versions.items()},
            "failures": failures[:30],
        }
    )
)
