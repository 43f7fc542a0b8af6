"""/openapi.json describes exactly the app's routes, and real responses conform to it."""

import re

import jsonschema
import orjson
import pytest

from .conftest import ROWS

JSON = {"Content-Type": "application/json"}


def spec_paths(client) -> dict:
    return client.get("/openapi.json").get_json()["paths"]


def test_every_route_is_documented_and_nothing_else(client):
    app_routes = set()
    for rule in client.application.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            app_routes.add((path, method.lower()))
    documented = {(path, method) for path, item in spec_paths(client).items() for method in item}
    assert app_routes == documented


def _validate(document: dict, schema: dict, instance: object) -> None:
    resolver_schema = {**schema, "components": document["components"]}
    jsonschema.validate(instance, resolver_schema)


@pytest.mark.parametrize(
    ("method", "path", "url", "body"),
    [
        ("get", "/v2", "/v2", None),
        ("get", "/v2/models/{name}", "/v2/models/diabetes", None),
        ("get", "/v2/health/ready", "/v2/health/ready", None),
        ("get", "/v1/models", "/v1/models", None),
        ("post", "/predict", "/predict", {"instances": ROWS.tolist()}),
        ("post", "/predict", "/predict", {"instances": [[1]]}),
        (
            "post",
            "/v2/models/{name}/infer",
            "/v2/models/diabetes/infer",
            {"id": "1", "inputs": [{"name": "x", "shape": [3, 10], "datatype": "FP64", "data": ROWS.tolist()}]},
        ),
        ("post", "/v2/models/{name}/infer", "/v2/models/diabetes/infer", {"inputs": "nope"}),
    ],
)
def test_responses_conform_to_the_documented_schema(client, method, path, url, body):
    document = client.get("/openapi.json").get_json()
    kwargs = {"data": orjson.dumps(body), "headers": JSON} if body is not None else {}
    response = getattr(client, method)(url, **kwargs)
    documented = document["paths"][path][method]["responses"]
    assert str(response.status_code) in documented, f"{response.status_code} is not documented for {method} {path}"
    schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
    _validate(document, schema, response.get_json())
    if body is not None and response.status_code == 200:
        request_schema = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        _validate(document, request_schema, body)


@pytest.mark.parametrize("model", ["diabetes", "penguins"])
def test_the_documented_examples_are_working_requests_for_the_served_model(request, model):
    client = request.getfixturevalue("client" if model == "diabetes" else "penguins_client")
    document = client.get("/openapi.json").get_json()
    for path, url in (
        ("/v1/models/{name}:predict", f"/v1/models/{model}:predict"),
        ("/v2/models/{name}/infer", f"/v2/models/{model}/infer"),
    ):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        _validate(document, body["schema"], body["example"])
        response = client.post(url, data=orjson.dumps(body["example"]), headers=JSON)
        assert response.status_code == 200, response.get_json()
        schema = document["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        _validate(document, schema, response.get_json())
    assert document["paths"]["/v2/models/{name}"]["get"]["parameters"][0]["example"] == model
