"""Unit tests of V1 and V2 parsing into the one feature matrix, and of V2 response encoding."""

import numpy as np
import pytest
from model_server import jsonbody, v1, v2
from model_server.errors import ClientError

FEATURES = ["a", "b", "c"]


def v2_body(data, shape=None, datatype="FP64", name="input-0", **extra):
    shape = shape if shape is not None else list(np.asarray(data).shape)
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


def refused(call, status: int, fragment: str) -> None:
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.status == status, caught.value.message
    assert fragment in caught.value.message


class TestV1:
    def test_rows_as_lists(self):
        matrix = v1.parse_request({"instances": [[1, 2, 3], [4.5, 5, 6]]}, FEATURES, 10)
        assert matrix.dtype == np.float64
        np.testing.assert_array_equal(matrix, [[1, 2, 3], [4.5, 5, 6]])

    def test_rows_as_objects_are_ordered_by_feature_name(self):
        matrix = v1.parse_request({"instances": [{"c": 3, "a": 1, "b": 2}]}, FEATURES, 10)
        np.testing.assert_array_equal(matrix, [[1, 2, 3]])

    def test_inputs_is_accepted_as_an_alias(self):
        assert v1.parse_request({"inputs": [[1, 2, 3]]}, FEATURES, 10).shape == (1, 3)

    @pytest.mark.parametrize(
        ("body", "status", "fragment"),
        [
            ([[1, 2, 3]], 400, "must be a JSON object"),
            ({"rows": [[1, 2, 3]]}, 400, 'needs "instances"'),
            ({"instances": "1,2,3"}, 400, "must be a list"),
            ({"instances": []}, 422, "has no rows"),
            ({"instances": [[1, 2]]}, 422, "have 2 features; the model expects 3"),
            ({"instances": [1, 2, 3]}, 422, "must be 2-dimensional"),
            ({"instances": [[1, 2, 3], [1, 2]]}, 422, "ragged"),
            ({"instances": [[1, "2", 3]]}, 422, "strings found"),
            ({"instances": [[True, False, True]]}, 422, "booleans found"),
            ({"instances": [[1, None, 3]]}, 422, "non-numeric"),
            ({"instances": [[1, 2, 1e308 * 10]]}, 422, "non-finite"),
            ({"instances": [{"a": 1, "b": 2}]}, 422, "missing c"),
            ({"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}, 422, "unknown d"),
            ({"instances": [{"a": 1, "b": 2, "c": 3}, [1, 2, 3]]}, 422, "do not mix"),
            ({"instances": [[1, 2, 3]] * 11}, 413, "11 rows; the limit is 10"),
        ],
    )
    def test_bad_bodies_are_refused_with_a_named_reason(self, body, status, fragment):
        refused(lambda: v1.parse_request(body, FEATURES, 10), status, fragment)


class TestV2:
    def test_flat_row_major_data(self):
        parsed = v2.parse_request(v2_body([1, 2, 3, 4, 5, 6], shape=[2, 3]), b"", FEATURES, 10)
        np.testing.assert_array_equal(parsed.matrix, [[1, 2, 3], [4, 5, 6]])

    def test_nested_data_and_id(self):
        parsed = v2.parse_request(v2_body([[1, 2, 3]], id="req-1"), b"", FEATURES, 10)
        assert parsed.id == "req-1"
        assert parsed.matrix.shape == (1, 3)

    def test_fp32_values_take_float32_precision(self):
        parsed = v2.parse_request(v2_body([[0.1, 0.2, 0.3]], datatype="FP32"), b"", FEATURES, 10)
        np.testing.assert_array_equal(parsed.matrix, np.array([[0.1, 0.2, 0.3]], dtype=np.float32).astype(np.float64))

    def test_integer_datatypes(self):
        parsed = v2.parse_request(v2_body([[1, 2, 3]], datatype="INT32"), b"", FEATURES, 10)
        assert parsed.matrix.dtype == np.float64

    def test_one_column_per_feature(self):
        body = {
            "inputs": [
                {"name": "b", "shape": [2], "datatype": "FP64", "data": [2, 20]},
                {"name": "a", "shape": [2, 1], "datatype": "FP64", "data": [[1], [10]]},
                {"name": "c", "shape": [2], "datatype": "INT64", "data": [3, 30]},
            ]
        }
        np.testing.assert_array_equal(v2.parse_request(body, b"", FEATURES, 10).matrix, [[1, 2, 3], [10, 20, 30]])

    def test_binary_tensor_extension(self):
        raw = np.array([[1, 2, 3]], dtype="<f4").tobytes()
        body = {
            "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}]
        }
        parsed = v2.parse_request(body, raw, FEATURES, 10)
        np.testing.assert_array_equal(parsed.matrix, [[1, 2, 3]])

    def test_parameters_are_accepted_and_outputs_honoured(self):
        body = v2_body(
            [[1, 2, 3]],
            parameters={"content_type": "np"},
            outputs=[{"name": "predict", "parameters": {"binary_data": True}}],
        )
        parsed = v2.parse_request(body, b"", FEATURES, 10)
        payload, binary = v2.encode_response(np.array([1.5]), parsed, "m", "1")
        assert payload["outputs"][0]["parameters"] == {"binary_data_size": 8}
        assert "data" not in payload["outputs"][0]
        assert np.frombuffer(binary, "<f8").tolist() == [1.5]

    def test_json_response_shape(self):
        parsed = v2.parse_request(v2_body([[1, 2, 3], [4, 5, 6]], id="7"), b"", FEATURES, 10)
        payload, binary = v2.encode_response(np.array([1.0, 2.0]), parsed, "m", "1")
        assert binary == b""
        assert payload["id"] == "7"
        assert payload["model_name"] == "m"
        output = payload["outputs"][0]
        assert (output["name"], output["datatype"], output["shape"]) == ("predict", "FP64", [2])
        assert output["data"].tolist() == [1.0, 2.0]

    @pytest.mark.parametrize(
        ("body", "binary", "status", "fragment"),
        [
            ([], b"", 400, "must be a JSON object"),
            ({"inputs": []}, b"", 400, "non-empty list"),
            ({"inputs": [{"shape": [1, 3]}]}, b"", 400, 'needs a "name"'),
            (v2_body([[1, 2, 3]], id=5), b"", 400, '"id" must be a string'),
            (v2_body([[1, 2, 3]], shape=[1, -3]), b"", 400, "non-negative integers"),
            (v2_body([[1, 2, 3]], shape=[1, 1, 3]), b"", 422, "expected [rows, features]"),
            (v2_body([[1, 2, 3]], datatype="BYTES"), b"", 422, "datatype 'BYTES'"),
            (v2_body([[1, 2, 3]], datatype="BOOL"), b"", 422, "datatype 'BOOL'"),
            (v2_body([[1, 2, 3]], shape=[2, 3]), b"", 422, "has 3 values; shape [2, 3] needs 6"),
            (v2_body([[1, 2]]), b"", 422, "the model expects 3"),
            (v2_body([[1.5, 2, 3]], datatype="INT64"), b"", 422, "non-integer"),
            (v2_body([[1, 2, 300]], datatype="INT8"), b"", 422, "outside the INT8 range"),
            (v2_body([["1", 2, 3]]), b"", 422, "strings found"),
            (v2_body([[1, 2, 3]], shape=[11, 3]), b"", 413, "the limit is 10"),
            (v2_body([[1, 2, 3]], outputs=[{"name": "proba"}]), b"", 400, "unknown output 'proba'"),
            (v2_body([[1, 2, 3]], outputs="predict"), b"", 400, '"outputs" must be a list'),
            (
                {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}] * 2},
                b"",
                400,
                "appears twice",
            ),
            (
                {
                    "inputs": [
                        {"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},
                        {"name": "z", "shape": [1], "datatype": "FP64", "data": [1]},
                    ]
                },
                b"",
                422,
                "unknown z",
            ),
            (
                {
                    "inputs": [
                        {"name": "x", "shape": [1, 3], "datatype": "FP64", "parameters": {"binary_data_size": 24}}
                    ]
                },
                b"\0" * 8,
                400,
                "does not fit",
            ),
            (v2_body([[1, 2, 3]]), b"extra", 400, "no input claims"),
        ],
    )
    def test_bad_requests_are_refused_with_a_named_reason(self, body, binary, status, fragment):
        refused(lambda: v2.parse_request(body, binary, FEATURES, 10), status, fragment)


class TestStrictJson:
    @pytest.mark.parametrize(
        "raw",
        [
            b'{"instances": [[1, 2, 3]], "instances": [[4, 5, 6]]}',
            b'{"inputs": [{"name": "a", "name": "b", "shape": [1], "datatype": "FP64", "data": [1]}]}',
            b'{"a": {"x": 1, "x": 2}}',
            b'[{"k": 1, "k": 1}]',
        ],
    )
    def test_duplicated_keys_are_refused(self, raw):
        refused(lambda: jsonbody.loads(raw), 400, "repeats a key")

    @pytest.mark.parametrize(
        "raw",
        [
            b'{"id": "a\\":b", "instances": [[1, 2, 3]]}',
            b'{"id": "{\\"x\\": 1, \\"x\\": 2}", "k": ":"}',
            b'{"a": [], "b": {}, "c": [[{"d": 1}]], "e": "\\\\"}',
            b"[1, 2, 3]",
        ],
    )
    def test_strings_that_look_like_keys_are_not_mistaken_for_duplicates(self, raw):
        jsonbody.loads(raw)

    @pytest.mark.parametrize(
        ("raw", "fragment"),
        [
            (b"{nope", "malformed JSON"),
            (b'{"a": NaN}', "malformed JSON"),
            (b'{"a": Infinity}', "malformed JSON"),
            (b'{"a": "\\xff"}'.replace(b"\\xff", b"\xff"), "malformed JSON"),
            (b"[" * 2000 + b"]" * 2000, "malformed JSON"),
            (b" " * 1000, "malformed JSON"),
        ],
    )
    def test_invalid_json_is_refused(self, raw, fragment):
        refused(lambda: jsonbody.loads(raw), 400, fragment)


@pytest.mark.parametrize("member", ["id", "parameters", "outputs"])
def test_v2_optional_members_may_be_absent_but_not_null(member):
    body = v2_body([[1, 2, 3]], **{member: None})
    refused(lambda: v2.parse_request(body, b"", FEATURES, 10), 400, f'"{member}"')


def test_v2_a_malformed_tensor_is_reported_before_another_tensor_is_over_the_row_limit():
    body = {
        "inputs": [
            {"name": "a", "shape": [10**9, 10], "datatype": "FP64", "data": [1]},
            {"name": "b", "shape": [-1], "datatype": "FP64", "data": [1]},
        ]
    }
    refused(lambda: v2.parse_request(body, b"", FEATURES, 10), 400, "non-negative integers")
