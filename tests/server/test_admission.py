"""Request bodies are held against a per-worker byte budget: past it a large body is refused unread, with
503 and Retry-After, on the fast path and through Flask alike; small bodies are never counted."""

from __future__ import annotations

import io

import orjson
import pytest
from model_server.errors import BodyBudgetExceeded
from model_server.transport import admission, fastpath
from model_server.transport.admission import CLOSE_CONNECTION_ENVIRON_KEY, SMALL_BODY_BYTES, BodyBudget, request_body
from model_server.transport.app import create_app
from model_server.transport.middleware import Observability
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.test import Client

from .conftest import make_settings

BIG = SMALL_BODY_BYTES + 1


def environ(body: bytes, *, chunked: bool = False) -> dict[str, object]:
    env: dict[str, object] = {"wsgi.input": io.BytesIO(body)}
    if chunked:
        env["wsgi.input_terminated"] = True
    else:
        env["CONTENT_LENGTH"] = str(len(body))
    return env


def test_a_body_is_held_while_its_request_is_served_and_given_back_after():
    budget = BodyBudget(3 * BIG)
    with request_body(environ(b"x" * BIG), 1 << 20, budget) as raw:
        assert len(raw) == BIG
        assert budget.held == BIG
    assert budget.held == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["declared length", "chunked"])
def test_a_body_past_the_budget_is_refused_and_the_connection_marked_to_close(chunked):
    budget = BodyBudget(2 * BIG)
    first = environ(b"x" * BIG, chunked=chunked)
    # Positive control: a second body fits beside the first.
    with request_body(first, 1 << 20, budget), request_body(environ(b"y" * BIG, chunked=chunked), 1 << 20, budget):
        assert budget.held == 2 * BIG
        refused = environ(b"z" * BIG, chunked=chunked)
        with pytest.raises(BodyBudgetExceeded) as caught, request_body(refused, 1 << 20, budget):
            pass
        assert caught.value.status == 503
        assert ("Retry-After", "1") in caught.value.headers
        assert refused[CLOSE_CONNECTION_ENVIRON_KEY] is True
        assert CLOSE_CONNECTION_ENVIRON_KEY not in first
        if not chunked:
            # Refused before a byte was read: the stream is where the headers left it.
            assert refused["wsgi.input"].tell() == 0  # type: ignore[attr-defined]
        assert budget.held == 2 * BIG
    assert budget.held == 0


def test_small_bodies_are_never_counted():
    budget = BodyBudget(BIG)
    with request_body(environ(b"x" * BIG), 1 << 20, budget):
        # The budget is spent, yet a small body still gets in.
        with request_body(environ(b"s" * SMALL_BODY_BYTES), 1 << 20, budget) as raw:
            assert len(raw) == SMALL_BODY_BYTES
        with request_body(environ(b"s" * SMALL_BODY_BYTES, chunked=True), 1 << 20, budget) as raw:
            assert len(raw) == SMALL_BODY_BYTES
        assert budget.held == BIG


def test_over_the_body_limit_is_413_and_closes_unread_whatever_the_budget():
    budget = BodyBudget(1 << 30)
    for chunked in (False, True):
        env = environ(b"x" * 5000, chunked=chunked)
        with pytest.raises(RequestEntityTooLarge), request_body(env, 4096, budget):
            pass
        assert env[CLOSE_CONNECTION_ENVIRON_KEY] is True
    assert budget.held == 0


def test_the_refusal_is_counted_as_a_shed():
    budget = BodyBudget(BIG)
    before = admission.metrics.shed("body_budget")._value.get()
    held = request_body(environ(b"x" * BIG), 1 << 20, budget)
    refused = request_body(environ(b"x" * BIG), 1 << 20, budget)
    with held, pytest.raises(BodyBudgetExceeded), refused:
        pass
    assert admission.metrics.shed("body_budget")._value.get() == before + 1


@pytest.mark.parametrize("path", ["/predict", "/v2/models/diabetes/infer"])
def test_fast_path_and_flask_refuse_a_body_past_the_budget_alike(artifact_dir, path):
    app = create_app(
        make_settings(
            artifact_dir, MODEL_SERVER_MAX_BODY_BYTES="1048576", MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES="1048576"
        )
    )
    fast = app.extensions[fastpath.EXTENSION]
    budget = fast.budget
    big = b" " * BIG + orjson.dumps({"instances": [[0.1] * 10]})
    answers = []
    for client in (Client(app.wsgi_app), Client(Observability(fast.app))):
        ok = client.post(path, data=b"{}", headers={"Content-Type": "application/json"})
        assert ok.status_code in (400, 422), ok.get_data()  # positive control: read and answered on its merits
        assert budget.take(budget.limit - BIG + 1)  # another request holds nearly all of it
        try:
            refused = client.post(path, data=big, headers={"Content-Type": "application/json"})
        finally:
            budget.give(budget.limit - BIG + 1)
        answers.append((refused.status_code, refused.headers.get("Retry-After"), refused.get_json()["error"]))
    fast, flask = answers
    assert fast == flask
    assert fast[0] == 503
    assert fast[1] == "1"
    assert "MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES" in fast[2]
    assert budget.held == 0
