"""A chunk's lines from the template are the lines of the general way, byte for byte."""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import orjson
import pytest

from failsoft.config import parse_config
from failsoft.data.input_checks import DataVerdict, DataViolation, Violation
from failsoft.data.prediction_index import Predicted
from failsoft.data.prediction_lines import ChunkEncoder, _quoted_ids
from failsoft.data.prediction_packed import ALIKE, lines_of
from failsoft.data.prediction_record import TRAIL, Pending, RecordMaker, pending

PYTHON = {"backend": "python", "function": "tests.integration._models:heuristic"}
INPUTS = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
MODELS = {
    "m": {
        "inputs": INPUTS,
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
        ],
        "versions": {"v1": PYTHON, "v2": PYTHON},
        "default_version": "v1",
    },
    "scores": {  # the label is the highest score
        "inputs": INPUTS,
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
        "versions": {"v1": PYTHON},
    },
    "price": {  # a regression
        "inputs": INPUTS,
        "outputs": [{"name": "value", "datatype": "FP64", "shape": [-1]}],
        "versions": {"v1": PYTHON},
    },
    "names": {
        "inputs": INPUTS,
        "outputs": [{"name": "name", "datatype": "BYTES", "shape": [-1]}],
        "versions": {"v1": PYTHON},
    },
    "seg": {
        "inputs": INPUTS,
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "versions": {"v1": PYTHON},
    },
}
SEGMENTS = {"seg": {"input": "x", "column": 2, "edges": [1.0, 2.0]}}


def configured(**options: Any) -> Any:
    predictions = {"enabled": True, "feedback": {"segments": SEGMENTS}, **options}
    return parse_config({"predictions": predictions, "models": MODELS})


def encoded(
    encoder: ChunkEncoder, items: list[Pending], configs: dict[int, Any], predicted: Predicted
) -> tuple[list[bytes], int]:
    """The chunk's lines as the writer process makes them, and the records not made."""
    chunk, bad = encoder.encode(items, configs, predicted)
    return (lines_of(chunk).splitlines() if chunk else []), bad


def verdict() -> DataVerdict:
    broken = Violation("x", 0, "2", 2, (0, 2), "max", 9.5, 5.0)
    return DataVerdict("flag", DataViolation([broken], 1))


def outputs_of(model: str, rows: int, rng: random.Random) -> dict[str, np.ndarray]:
    if model == "scores":
        return {"scores": np.array([[rng.random() for _ in range(3)] for _ in range(rows)])}
    if model == "price":
        return {"value": np.array([rng.random() * 100 for _ in range(rows)])}
    if model == "names":
        return {"name": np.array([b"setosa", "vir\u00e9"][:rows] * rows, dtype=object)[:rows]}
    label = np.array(
        [rng.randrange(3) for _ in range(rows)], dtype=rng.choice([np.int64, np.uint8])
    )
    return {"label": label, "scores": np.ones((rows, 3), dtype=np.float32)}


def inputs_of(rows: int, rng: random.Random) -> Any:
    shape = rng.choice(["plain", "plain", "plain", "view", "two", "scalar", "strings"])
    x = np.array([[rng.random() * 3 for _ in range(4)] for _ in range(rows)], dtype=np.float32)
    if shape == "view":  # not contiguous: hashed from a copy
        return {"x": np.asfortranarray(np.repeat(x, 2, axis=1))[:, ::2]}
    if shape == "two":
        return {"x": x, "w": np.arange(rows, dtype=np.int32)}
    if shape == "scalar":  # no rows: the record cannot be made
        return {"x": np.float32(1.0).reshape(())}
    if shape == "strings":
        return {"x": np.array(["a", "b\u00e9"] * rows, dtype=object)}
    return {"x": x}


def random_item(rng: random.Random, key: int) -> Pending:
    model = rng.choice(["m", "m", "m", "scores", "price", "names", "seg"])
    version = rng.choice(["v1", "v2"]) if model == "m" else "v1"
    rows = rng.choice([1, 1, 1, 2, 3])
    request_id = rng.choice(
        [f"{rng.getrandbits(64):016x}", 'quote"d', "back\\slash", "tab\tbed", "caf\u00e9", "\ud800"]
    )
    tenant = rng.choice([None, None, "acme", 'we"ird'])
    served_by = rng.choice(
        [f"{model}/{version}/r0", f"{model}/{version}/r1", f"{model}/{version}/fallback:static"]
    )
    status = rng.choice([200] * 8 + [422, 503])
    when = time.time() + rng.random() * 1000
    asked = rng.choice([version, "canary"])
    revision = rng.choice([0, 0, 7])
    if status != 200:
        return pending(
            when, request_id, tenant, model, asked, status, revision, key,
            inputs=inputs_of(rows, rng) if rng.random() < 0.7 else None,
            failure="data" if status == 422 else "replica", error="it failed",
        )  # fmt: skip
    item = pending(
        when, request_id, tenant, model, asked, 200, revision, key,
        served_version=version, served_by=served_by, degraded=rng.random() < 0.2,
        inputs=inputs_of(rows, rng), outputs=outputs_of(model, rows, rng),
    )  # fmt: skip
    if rng.random() < 0.1:  # a failed attempt before the answer
        trail = [{"version": version, "replica": "r1", "outcome": "failed"}]
        item = (*item[:TRAIL], trail, item[TRAIL + 1])
    if rng.random() < 0.1:  # served, though the input broke a constraint
        item = (*item[:-1], verdict())
    return item


def the_general_way(
    maker: RecordMaker, items: list[Pending], config: Any
) -> tuple[list[bytes], int, Predicted]:
    lines, bad, predicted = [], 0, Predicted()
    for item in items:
        try:
            record = maker.make(item, config)
            lines.append(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))
        except Exception:
            bad += 1
            continue
        predicted.append_record(record)
    return lines, bad, predicted


@pytest.mark.parametrize(
    "options",
    [{}, {"record_prediction": False}, {"record_inputs": True}, {"record_outputs": True}],
    ids=["default", "no-prediction", "inputs", "outputs"],
)
def test_the_template_writes_what_the_general_way_writes(options: dict[str, Any]) -> None:
    rng = random.Random(11)
    config = configured(**options)
    configs = {1: config}
    encoder = ChunkEncoder(RecordMaker(config.predictions))
    reference = RecordMaker(config.predictions)
    plain = 0
    for _ in range(60):
        items = [random_item(rng, 1) for _ in range(rng.randrange(1, 80))]
        predicted = Predicted()
        lines, bad = encoded(encoder, items, configs, predicted)
        expected, expected_bad, expected_predicted = the_general_way(reference, items, config)
        assert lines == expected
        assert bad == expected_bad
        assert predicted == expected_predicted
        plain += sum(1 for item in items if item[5] == 200 and item[-1] is None)
    assert plain > 1000  # the template's own path was taken, not only the general one


def test_a_new_configuration_under_a_reused_key_is_not_confused_with_the_old() -> None:
    rng = random.Random(3)
    first, second = configured(), configured()
    encoder = ChunkEncoder(RecordMaker(first.predictions))
    item = pending(
        1.5, "r1", None, "m", "v1", 200, 0, 1, served_version="v1", served_by="m/v1/r0",
        inputs=inputs_of(1, rng), outputs=outputs_of("m", 1, rng),
    )  # fmt: skip
    encoded(encoder, [item], {1: first}, Predicted())
    # The same key now names another configuration, whose first output is another one.
    second.models["m"].outputs.reverse()
    lines, _ = encoded(encoder, [item], {1: second}, Predicted())
    expected = RecordMaker(second.predictions).make(item, second)
    assert orjson.loads(lines[0]) == expected
    assert expected["kind"] == "classification"
    assert expected["prediction"] == [int(np.argmax(item[12][3][0]))]


def alike(rng: random.Random, index: int, spoiler: str) -> Pending:
    """An answer of iris-like traffic: one model, version and replica."""
    x = np.array([[rng.random() * 3 for _ in range(4)]], dtype=np.float32)
    label = np.array([rng.randrange(3)], dtype=np.int64)
    request_id = f"{rng.getrandbits(64):016x}"
    tenant, revision = rng.choice([(None, 0), ("acme", 0), (None, 4), ('we"ird', 4)])
    if index == 5:  # one answer that spoils the chunk, or none
        if spoiler == "escaped-id":
            request_id = 'quote"d'
        elif spoiler == "strided-input":
            x = np.asfortranarray(np.repeat(x, 2, axis=1))[:, ::2]  # same shape, not contiguous
        elif spoiler == "two-rows":
            x, label = np.repeat(x, 2, axis=0), np.repeat(label, 2)
        elif spoiler == "label-dtype":
            label = label.astype(np.uint8)
        elif spoiler == "other-replica":
            return pending(
                2.5, request_id, tenant, "m", "v1", 200, revision, 1, served_version="v1",
                served_by="m/v1/r1", inputs={"x": x}, outputs={"label": label},
            )  # fmt: skip
    return pending(
        1.0 + index / 3, request_id, tenant, "m", "v1", 200, revision, 1, served_version="v1",
        served_by="m/v1/r0", degraded=rng.random() < 0.1, inputs={"x": x},
        outputs={"label": label, "scores": np.ones((len(label), 3), dtype=np.float32)},
    )  # fmt: skip


@pytest.mark.parametrize(
    "spoiler",
    ["none", "escaped-id", "strided-input", "two-rows", "label-dtype", "other-replica"],
)
def test_a_chunk_of_alike_answers_is_written_as_the_general_way_writes_it(spoiler: str) -> None:
    rng = random.Random(5)
    config = configured()
    maker = RecordMaker(config.predictions)
    items = [alike(rng, index, spoiler) for index in range(64)]
    predicted = Predicted()
    lines, bad = encoded(ChunkEncoder(maker), items, {1: config}, predicted)
    expected, expected_bad, expected_predicted = the_general_way(maker, items, config)
    assert (lines, bad) == (expected, expected_bad)
    assert predicted == expected_predicted
    assert len(predicted) == 64
    # Column by column for such a chunk; item by item for any other.
    chunk, _ = ChunkEncoder(maker).encode(items, {1: config}, Predicted())
    column_by_column = chunk[:1] == ALIKE
    assert column_by_column == (spoiler in ("none", "escaped-id", "strided-input"))


@pytest.mark.parametrize(
    "ids",
    [
        ["0123456789abcdef0123456789abcdef"],
        ["a", "", "caf\u00e9", "b"],
        ["plain", "nul\0inside", "other"],  # NUL joins the ids: one inside must not cut
        ["plain", 'quote"d', "back\\slash", "tab\tbed", "\x1f"],
        ["plain", "\ud800"],  # not encodable: no JSON string at all
    ],
)
def test_request_ids_are_quoted_as_orjson_quotes_them(ids: list[str]) -> None:
    items: list[Pending] = [pending(1.0, rid, None, "m", "v1", 200, 0, 1) for rid in ids]

    def expected(rid: str) -> bytes | None:
        try:
            return orjson.dumps(rid)
        except orjson.JSONEncodeError:
            return None

    assert list(_quoted_ids(items)) == [expected(rid) for rid in ids]
