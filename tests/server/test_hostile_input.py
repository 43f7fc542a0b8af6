"""Property-based: no body, header or path a client can send makes the server answer 5xx."""

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ENDPOINTS = ["/predict", "/v1/models/{model}:predict", "/v2/models/{model}/infer"]
MODELS = ["diabetes", "penguins"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)
numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), st.booleans())
# What a mixed-type model's columns hold: strings, numbers, booleans, nulls.
values = numbers | st.none() | st.sampled_from(["Biscoe", "male", "", "Atlantis"]) | st.text(max_size=6)
plausible_v2 = st.fixed_dictionaries(
    {
        "inputs": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["input-0", "age", "bmi", "island", "sex", "body_mass_g", ""]),
                    "shape": st.lists(st.integers(-2, 12), max_size=3),
                    "datatype": st.sampled_from(["FP64", "FP32", "FP16", "INT8", "UINT64", "BOOL", "BYTES", "xx"]),
                    "data": st.lists(values | st.lists(values, max_size=11), max_size=12),
                }
            ),
            max_size=3,
        )
    },
    optional={
        "id": json_values,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["predict", "predict_proba", "transform", "x"])}), max_size=2
        ),
        "parameters": st.fixed_dictionaries({}, optional={"content_type": st.sampled_from(["pd", "np", "zz", None])}),
    },
)
plausible_v1 = st.fixed_dictionaries(
    {
        "instances": st.lists(
            st.lists(values, min_size=5, max_size=11)
            | st.dictionaries(st.sampled_from(["age", "sex", "bmi", "island", "bill_length_mm", "zz"]), values),
            max_size=5,
        )
    }
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_client_error_at_worst(response) -> None:
    assert response.status_code < 500, response.data
    if response.status_code >= 400:
        assert "error" in response.get_json()


@pytest.fixture(params=MODELS)
def model_client(request):
    """Each endpoint of the numeric regressor and of the mixed-type classifier pipeline."""
    client = request.getfixturevalue("client" if request.param == "diabetes" else "penguins_client")
    return request.param, client


@FAST
@given(endpoint=st.sampled_from(ENDPOINTS), body=json_values | plausible_v1 | plausible_v2)
def test_random_json_never_yields_5xx(model_client, endpoint, body):
    model, client = model_client
    endpoint = endpoint.format(model=model)
    try:
        data = orjson.dumps(body)
    except TypeError:  # integers past 64 bits are not encodable; send their text instead
        data = repr(body).encode()
    assert_client_error_at_worst(client.post(endpoint, data=data, headers={"Content-Type": "application/json"}))


@FAST
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    data=st.binary(max_size=300),
    content_type=st.sampled_from(
        ["application/json", "", "application/octet-stream", "text/plain", "application/x-www-form-urlencoded"]
    ),
    split=st.none() | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=4),
)
def test_random_bytes_and_headers_never_yield_5xx(model_client, endpoint, data, content_type, split):
    model, client = model_client
    endpoint = endpoint.format(model=model)
    headers = {"Content-Type": content_type} if content_type else {}
    if split is not None:
        headers["Inference-Header-Content-Length"] = split
    assert_client_error_at_worst(client.post(endpoint, data=data, headers=headers))


@FAST
@given(path=st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="?#"), max_size=30))
def test_random_paths_never_yield_5xx(client, path):
    for method in (client.get, client.post):
        assert_client_error_at_worst(method("/v2/models/" + path))
