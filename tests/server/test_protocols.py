"""Unit tests of V1 and V2 parsing into a checked batch (one float matrix, or typed columns), and of V2
response encoding for every output datatype."""

import json
import struct

import numpy as np
import pytest
from model_server.core.signature import Column, Output, Signature
from model_server.errors import ClientError
from model_server.transport import jsonbody, v1, v2

FEATURES = ["a", "b", "c"]
NUMERIC = Signature(tuple(Column(name, "FP64") for name in FEATURES))
PREDICT = {"predict": Output("predict", "FP64", (-1,))}
# What a penguins-like pipeline takes: strings, numbers with gaps, whole numbers, booleans.
MIXED = Signature(
    (
        Column("island", "BYTES", categories=("Biscoe", "Dream")),
        Column("mass", "FP64", nullable=True),
        Column("year", "INT64"),
        Column("ringed", "BOOL", nullable=True),
        Column("sex", "BYTES", nullable=True),
    ),
    frame=True,
)
CLASSIFIER_OUTPUTS = {
    "predict": Output("predict", "BYTES", (-1,)),
    "predict_proba": Output("predict_proba", "FP64", (-1, 2), {"classes": ["a", "b"]}),
}


def parse_v1(body, signature=NUMERIC, max_rows=10):
    return v1.parse_request(body, signature, max_rows)


def parse_v2(body, binary=b"", signature=NUMERIC, outputs=None, max_rows=10):
    available = outputs or PREDICT
    return v2.parse_request(body, binary, signature, available, (next(iter(available)),), max_rows)


def matrix_of(body, **kwargs):
    return parse_v2(body, **kwargs).batch.matrix


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
        matrix = parse_v1({"instances": [[1, 2, 3], [4.5, 5, 6]]}).matrix
        assert matrix.dtype == np.float64
        np.testing.assert_array_equal(matrix, [[1, 2, 3], [4.5, 5, 6]])

    def test_rows_as_objects_are_ordered_by_feature_name(self):
        matrix = parse_v1({"instances": [{"c": 3, "a": 1, "b": 2}]}).matrix
        np.testing.assert_array_equal(matrix, [[1, 2, 3]])

    def test_inputs_is_accepted_as_an_alias(self):
        assert parse_v1({"inputs": [[1, 2, 3]]}).matrix.shape == (1, 3)

    @pytest.mark.parametrize(
        ("body", "status", "fragment"),
        [
            ([[1, 2, 3]], 400, "must be a JSON object"),
            ({"rows": [[1, 2, 3]]}, 400, 'needs "instances"'),
            ({"instances": "1,2,3"}, 400, "must be a list"),
            ({"instances": []}, 422, "has no rows"),
            ({"instances": [[1, 2]]}, 422, "have 2 features; the model expects 3"),
            ({"instances": [1, 2, 3]}, 422, "must be 2-dimensional"),
            ({"instances": [[1, 2, 3], [1, 2]]}, 422, '"instances"[1] has 2 values; the model takes 3: a, b, c'),
            ({"instances": [[1, "2", 3]]}, 422, "column 'b' is FP64 (numbers); row 0 holds a string"),
            ({"instances": [[True, False, True]]}, 422, "column 'a' is FP64 (numbers); row 0 holds a boolean"),
            ({"instances": [[1, None, 3]]}, 422, "column 'b' row 0 is null (or NaN), and the column is not nullable"),
            ({"instances": [[1, 2, 1e308 * 10]]}, 422, "infinite value in column 'c'"),
            ({"instances": [{"a": 1, "b": 2}]}, 422, "missing c"),
            ({"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}, 422, "unknown d"),
            ({"instances": [{"a": 1, "b": 2, "c": 3}, [1, 2, 3]]}, 422, "do not mix"),
            ({"instances": [[1, 2, 3]] * 11}, 413, "11 rows; the limit is 10"),
        ],
    )
    def test_bad_bodies_are_refused_with_a_named_reason(self, body, status, fragment):
        refused(lambda: parse_v1(body), status, fragment)


class TestV2:
    def test_flat_row_major_data(self):
        np.testing.assert_array_equal(matrix_of(v2_body([1, 2, 3, 4, 5, 6], shape=[2, 3])), [[1, 2, 3], [4, 5, 6]])

    def test_nested_data_and_id(self):
        parsed = parse_v2(v2_body([[1, 2, 3]], id="req-1"))
        assert parsed.id == "req-1"
        assert parsed.batch.matrix.shape == (1, 3)

    def test_fp32_values_take_float32_precision(self):
        matrix = matrix_of(v2_body([[0.1, 0.2, 0.3]], datatype="FP32"))
        np.testing.assert_array_equal(matrix, np.array([[0.1, 0.2, 0.3]], dtype=np.float32).astype(np.float64))

    @pytest.mark.parametrize("datatype", ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"])
    def test_integer_datatypes_keep_their_values_from_json_and_binary(self, datatype):
        dtype = np.dtype(v2.NUMERIC_DTYPES[datatype])
        info = np.iinfo(dtype)
        values = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=dtype)
        raw = values.astype(dtype.newbyteorder("<")).tobytes()
        tensor = {"name": "x", "shape": [2, 3], "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}
        np.testing.assert_array_equal(matrix_of({"inputs": [tensor]}, binary=raw), values.astype(np.float64))
        # JSON integers past int64 beside smaller ones are read as float64: 2**63 exactly, 2**64 - 1 not.
        if datatype == "UINT64":
            values[0, 2] = 2**63
        from_json = matrix_of(v2_body(values.tolist(), datatype=datatype))
        assert from_json.dtype == np.float64
        np.testing.assert_array_equal(from_json, values.astype(np.float64))

    @pytest.mark.parametrize(("datatype", "data"), [("UINT64", [[0, 1, 2**64]]), ("INT64", [[1.0, 2, 2**63]])])
    def test_json_integers_rounded_past_their_range_are_refused_not_wrapped(self, datatype, data):
        refused(lambda: parse_v2(v2_body(data, datatype=datatype)), 422, f"outside the {datatype} range")

    def test_one_column_per_feature(self):
        body = {
            "inputs": [
                {"name": "b", "shape": [2], "datatype": "FP64", "data": [2, 20]},
                {"name": "a", "shape": [2, 1], "datatype": "FP64", "data": [[1], [10]]},
                {"name": "c", "shape": [2], "datatype": "INT64", "data": [3, 30]},
            ]
        }
        batch = parse_v2(body).batch
        np.testing.assert_array_equal([batch.columns[name] for name in FEATURES], [[1, 10], [2, 20], [3, 30]])

    def test_binary_tensor_extension(self):
        raw = np.array([[1, 2, 3]], dtype="<f4").tobytes()
        body = {
            "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}]
        }
        np.testing.assert_array_equal(matrix_of(body, binary=raw), [[1, 2, 3]])

    def test_parameters_are_accepted_and_outputs_honoured(self):
        body = v2_body(
            [[1, 2, 3]],
            parameters={"content_type": "np"},
            outputs=[{"name": "predict", "parameters": {"binary_data": True}}],
        )
        parsed = parse_v2(body)
        payload, binary = v2.encode_response({"predict": np.array([1.5])}, PREDICT, parsed, "m", "1")
        assert payload["outputs"][0]["parameters"] == {"binary_data_size": 8}
        assert "data" not in payload["outputs"][0]
        assert np.frombuffer(binary, "<f8").tolist() == [1.5]

    def test_json_response_shape(self):
        parsed = parse_v2(v2_body([[1, 2, 3], [4, 5, 6]], id="7"))
        payload, binary = v2.encode_response({"predict": np.array([1.0, 2.0])}, PREDICT, parsed, "m", "1")
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
            (v2_body([[1, 2, 3]], shape=[1, 1, 3]), b"", 422, "expected [rows, columns]"),
            (v2_body([[1, 2, 3]], datatype="BYTES"), b"", 422, "is BYTES (strings); element 0 is a number"),
            (
                v2_body([["x", "y", "z"]], datatype="BYTES"),
                b"",
                422,
                "is BYTES; send numbers, or one tensor per column",
            ),
            (v2_body([[1, 2, 3]], datatype="BOOL"), b"", 422, "is BOOL (true/false); element 0 is a number"),
            (v2_body([[1, 2, 3]], datatype="STRING"), b"", 422, "datatype 'STRING'; supported: INT8"),
            (v2_body([[1, None, 3]]), b"", 422, "column 'b' row 0 is null"),
            (v2_body([[1, 2, 3]], shape=[2, 3]), b"", 422, "has 3 values; shape [2, 3] needs 6"),
            (v2_body([[1, 2]]), b"", 422, "the model expects 3"),
            (v2_body([[1.5, 2, 3]], datatype="INT64"), b"", 422, "non-integer"),
            (v2_body([[1, 2, 300]], datatype="INT8"), b"", 422, "outside the INT8 range"),
            (v2_body([["1", 2, 3]]), b"", 422, "strings found"),
            (v2_body([[1, 2, 3]], shape=[11, 3]), b"", 413, "the limit is 10"),
            (
                v2_body([[1, 2, 3]], outputs=[{"name": "proba"}]),
                b"",
                400,
                "unknown output 'proba'; this model has predict",
            ),
            (v2_body([[1, 2, 3]], outputs=[{"name": "predict"}] * 2), b"", 400, "output 'predict' is requested twice"),
            (v2_body([[1, 2, 3]], parameters={"content_type": "base64"}), b"", 422, "content_type 'base64'"),
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
                "missing b, c; unknown z (the model takes a, b, c)",
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
        refused(lambda: parse_v2(body, binary), status, fragment)


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
        assert jsonbody.loads(raw) == json.loads(raw)

    @pytest.mark.parametrize(
        ("raw", "fragment"),
        [
            (b"{nope", "malformed JSON"),
            (b'{"a": NaN, "b": [}', "malformed JSON"),
            (b'{"a": -Infinity}', "malformed JSON"),
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
    refused(lambda: parse_v2(body), 400, f'"{member}"')


def test_v2_a_malformed_tensor_is_reported_before_another_tensor_is_over_the_row_limit():
    body = {
        "inputs": [
            {"name": "a", "shape": [10**9, 10], "datatype": "FP64", "data": [1]},
            {"name": "b", "shape": [-1], "datatype": "FP64", "data": [1]},
        ]
    }
    refused(lambda: parse_v2(body), 400, "non-negative integers")


def column_tensor(name, data, datatype, shape=None, **parameters):
    tensor = {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}
    if parameters:
        tensor["parameters"] = parameters
    return tensor


MIXED_ROWS = [["Biscoe", 3750.0, 2007, True, "male"], ["Dream", None, 2008, None, None]]


class TestTypedColumns:
    def assert_mixed_batch(self, batch):
        assert batch.rows == 2
        assert batch.matrix is None
        assert batch.columns["island"].tolist() == ["Biscoe", "Dream"]
        assert batch.columns["island"].dtype == object
        np.testing.assert_array_equal(batch.columns["mass"], [3750.0, np.nan])
        assert batch.columns["year"].dtype == np.int64
        assert batch.columns["year"].tolist() == [2007, 2008]
        assert batch.columns["ringed"][0] is True
        assert np.isnan(batch.columns["ringed"][1])
        assert batch.columns["sex"][0] == "male"
        assert np.isnan(batch.columns["sex"][1])

    def test_v1_rows_of_mixed_values_in_signature_order(self):
        self.assert_mixed_batch(parse_v1({"instances": MIXED_ROWS}, MIXED))

    def test_v1_objects_keyed_by_column(self):
        names = [c.name for c in MIXED.columns]
        objects = [dict(zip(names, row, strict=True)) for row in MIXED_ROWS]
        self.assert_mixed_batch(parse_v1({"instances": objects}, MIXED))

    def test_v2_one_tensor_per_column_in_any_order_as_pandas_clients_send(self):
        body = {
            "parameters": {"content_type": "pd"},
            "inputs": [
                column_tensor("sex", ["male", None], "BYTES", content_type="str"),
                column_tensor("year", [[2007], [2008]], "INT32", shape=[2, 1]),
                column_tensor("island", ["Biscoe", "Dream"], "BYTES"),
                column_tensor("ringed", [True, None], "BOOL"),
                column_tensor("mass", [3750, None], "FP64"),
            ],
        }
        self.assert_mixed_batch(parse_v2(body, signature=MIXED, outputs=CLASSIFIER_OUTPUTS).batch)

    def test_v2_binary_bytes_and_bool_columns(self):
        def bytes_elements(*values):
            return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)

        island, ringed = bytes_elements("Biscoe", "Dream"), bytes([1, 0])
        year, mass, sex = (
            np.array([2007, 2008], "<i8").tobytes(),
            np.array([1.5, np.nan]).tobytes(),
            bytes_elements("", "ä"),
        )
        chunks = [
            ("island", "BYTES", island),
            ("mass", "FP64", mass),
            ("year", "INT64", year),
            ("ringed", "BOOL", ringed),
            ("sex", "BYTES", sex),
        ]
        body = {
            "inputs": [
                {"name": n, "shape": [2], "datatype": d, "parameters": {"binary_data_size": len(c)}}
                for n, d, c in chunks
            ]
        }
        batch = parse_v2(
            body, binary=b"".join(c for *_, c in chunks), signature=MIXED, outputs=CLASSIFIER_OUTPUTS
        ).batch
        assert batch.columns["island"].tolist() == ["Biscoe", "Dream"]
        assert batch.columns["sex"].tolist() == ["", "ä"]
        assert batch.columns["ringed"].tolist() == [True, False]
        assert batch.columns["year"].tolist() == [2007, 2008]
        np.testing.assert_array_equal(batch.columns["mass"], [1.5, np.nan])

    @pytest.mark.parametrize(
        ("row", "fragment"),
        [
            ([3, 3750.0, 2007, True, "male"], "column 'island' is BYTES (strings); row 0 holds a number"),
            (
                ["Biscoe", "heavy", 2007, True, "male"],
                "column 'mass' is FP64 (numbers, nullable); row 0 holds a string",
            ),
            (["Biscoe", 3750.0, 2007.5, True, "male"], "column 'year' is INT64 but holds a value that is not a whole"),
            (
                ["Biscoe", 3750.0, None, True, "male"],
                "column 'year' row 0 is null (or NaN), and the column is not nullable",
            ),
            (
                ["Biscoe", 3750.0, 2007, 1, "male"],
                "column 'ringed' is BOOL (true/false, nullable); row 0 holds a number",
            ),
            ([None, 3750.0, 2007, True, "male"], "column 'island' row 0 is null"),
            (["Biscoe", 3750.0, 2007, True, ["male"]], "column 'sex' must be a flat list of values"),
            (
                ["Biscoe", 3750.0, 2007],
                '"instances"[0] has 3 values; the model takes 5: island, mass, year, ringed, sex',
            ),
        ],
    )
    def test_v1_bad_values_name_the_column(self, row, fragment):
        refused(lambda: parse_v1({"instances": [row]}, MIXED), 422, fragment)

    @pytest.mark.parametrize(
        ("tensors", "fragment"),
        [
            ([column_tensor("island", [1.0], "FP64")], "column 'island' is BYTES (strings); row 0 holds a number"),
            (
                [column_tensor("mass", ["x"], "BYTES")],
                "column 'mass' is FP64 (numbers, nullable); row 0 holds a string",
            ),
            (
                [column_tensor("ringed", [1], "INT64")],
                "column 'ringed' is BOOL (true/false, nullable); row 0 holds a number",
            ),
            ([column_tensor("year", [1.5], "FP64")], "column 'year' is INT64 but holds a value that is not a whole"),
            ([column_tensor("year", [1, 2], "INT64")], "input columns have different row counts"),
        ],
    )
    def test_v2_bad_columns_are_named(self, tensors, fragment):
        good = {
            "island": column_tensor("island", ["Biscoe"], "BYTES"),
            "mass": column_tensor("mass", [1.0], "FP64"),
            "year": column_tensor("year", [2007], "INT64"),
            "ringed": column_tensor("ringed", [True], "BOOL"),
            "sex": column_tensor("sex", ["male"], "BYTES"),
        }
        good.update({t["name"]: t for t in tensors})
        refused(
            lambda: parse_v2({"inputs": list(good.values())}, signature=MIXED, outputs=CLASSIFIER_OUTPUTS),
            422,
            fragment,
        )

    def test_v2_one_matrix_tensor_is_refused_for_a_model_with_string_columns(self):
        body = v2_body([[1, 2, 3, 4, 5]])
        refused(
            lambda: parse_v2(body, signature=MIXED, outputs=CLASSIFIER_OUTPUTS),
            422,
            "one tensor per column: island (BYTES)",
        )

    @pytest.mark.parametrize(
        ("chunk", "fragment"),
        [
            (struct.pack("<I", 10) + b"abc", "element 0 claims 10 bytes past the end"),
            (struct.pack("<I", 1) + b"\xff", "element 0 is not UTF-8 text"),
            (struct.pack("<I", 1) + b"a" + b"zz", "2 bytes after its 1 elements"),
            (b"\x01", "ends before element 0 of 1"),
        ],
    )
    def test_v2_malformed_binary_bytes_are_refused(self, chunk, fragment):
        body = {
            "inputs": [
                {"name": "island", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(chunk)}}
            ]
        }
        signature = Signature((Column("island", "BYTES"),), frame=True)
        refused(lambda: parse_v2(body, binary=chunk, signature=signature), 422, fragment)

    def test_v2_binary_bool_holds_only_zero_and_one(self):
        body = {"inputs": [{"name": "ringed", "shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}}]}
        signature = Signature((Column("ringed", "BOOL"),))
        refused(lambda: parse_v2(body, binary=b"\x02", signature=signature), 422, "bytes other than 0 and 1")


class TestOutputs:
    def test_outputs_default_and_selection_in_request_order(self):
        body = {
            "inputs": [
                column_tensor(c.name, [v], c.datatype) for c, v in zip(MIXED.columns, MIXED_ROWS[0], strict=True)
            ]
        }
        assert parse_v2(body, signature=MIXED, outputs=CLASSIFIER_OUTPUTS).outputs == ("predict",)
        body["outputs"] = [{"name": "predict_proba"}, {"name": "predict"}]
        assert parse_v2(body, signature=MIXED, outputs=CLASSIFIER_OUTPUTS).outputs == ("predict_proba", "predict")

    def test_every_datatype_encodes_as_json_and_as_binary(self):
        outputs = {
            "labels": Output("labels", "BYTES", (-1,)),
            "ints": Output("ints", "INT64", (-1,)),
            "flags": Output("flags", "BOOL", (-1,)),
            "proba": Output("proba", "FP64", (-1, 2), {"classes": ["a", "b"]}),
        }
        results = {
            "labels": np.array(["Adelie", "Gentoo"], dtype=object),
            "ints": np.array([-1, 1]),
            "flags": np.array([True, False]),
            "proba": np.array([[0.25, 0.75], [1.0, 0.0]]),
        }
        request = v2.InferRequest(batch=None, outputs=tuple(outputs), binary_outputs=set())
        payload, binary = v2.encode_response(results, outputs, request, "m", "1")
        import orjson

        decoded = orjson.loads(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
        assert [o["data"] for o in decoded["outputs"]] == [
            ["Adelie", "Gentoo"],
            [-1, 1],
            [True, False],
            [0.25, 0.75, 1.0, 0.0],
        ]
        assert decoded["outputs"][3]["parameters"] == {"classes": ["a", "b"]}
        assert decoded["outputs"][3]["shape"] == [2, 2]
        request.binary_outputs = set(outputs)
        payload, binary = v2.encode_response(results, outputs, request, "m", "1")
        sizes = [o["parameters"]["binary_data_size"] for o in payload["outputs"]]
        assert sizes == [4 + 6 + 4 + 6, 16, 2, 32]
        assert binary[:10] == struct.pack("<I", 6) + b"Adelie"
        assert binary[20:36] == np.array([-1, 1], "<i8").tobytes()
        assert binary[36:38] == b"\x01\x00"

    def test_v1_labels_are_json_strings(self):
        assert v1.encode_response(np.array(["a", "b"], dtype=object), "BYTES") == {"predictions": ["a", "b"]}


def test_a_nan_literal_is_read_as_a_missing_value():
    # Python's json module and tritonclient's JSON tensors write NaN for a missing number.
    body = jsonbody.loads(b'{"instances": [["Biscoe", NaN, 2007, true, NaN]]}')
    batch = parse_v1(body, MIXED)
    assert np.isnan(batch.columns["mass"][0])
    assert np.isnan(batch.columns["sex"][0])
    refused(lambda: parse_v1(jsonbody.loads(b'{"instances": [[1, NaN, 3]]}')), 422, "column 'b' row 0 is null")


def test_a_list_mixing_rows_and_objects_is_not_called_a_repeated_key():
    body = jsonbody.loads(b'{"instances": [[1, 2, 3], {"a": 1, "b": 2, "c": 3}]}')
    refused(lambda: parse_v1(body), 422, '"instances"[1] is an object; do not mix objects and lists')
