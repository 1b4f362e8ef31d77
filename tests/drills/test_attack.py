"""A hostile client's requests (prepare_attack) and the drivers that send them and
poll readiness, against a loopback server that answers by what each request tries.

The drivers pace requests on the real clock (a few dozen, milliseconds apart);
what each one got depends only on what it sent, so every count is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
import pytest

from failsoft.drills.experiment import Attack, AttackRequest
from failsoft.drills.load import (
    NO_ANSWER,
    Schedule,
    oversize_body,
    poll_readiness,
    prepare_attack,
    run_attack,
)
from failsoft.drills.scorecard import attack_answers, poison_uncontained

HOST = "127.0.0.1"
LIMIT = 4096  # the fake server's body limit
FEATURES = [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
POISON = [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [3.0e38] * 4}]
KINDS: list[dict[str, Any]] = [
    {"kind": "poison", "inputs": POISON},
    {"kind": "deadline", "timeout_ms": 1, "inputs": FEATURES},
    {"kind": "outputs", "outputs": ["label"], "inputs": FEATURES},
    {"kind": "oversize", "body_bytes": 2 * LIMIT},
]


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines if line)
    }


def _answer(status: str, *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    return f"HTTP/1.1 {status}\r\nContent-Length: 2\r\n{extra}\r\n{{}}".encode()


class Gateway:
    """Answers like a gateway that contains hostile requests, and keeps what it got."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    def answer(self, line: str, headers: dict[str, str], body: bytes) -> bytes:
        if line.startswith("GET /v2/health/ready"):
            return _answer("200 OK") if self.ready else _answer("503 Service Unavailable")
        if len(body) > LIMIT:
            return _answer("413 Payload Too Large", "Connection: close")
        if headers.get("failsoft-timeout-ms") == "1":
            return _answer("504 Gateway Timeout")
        request = orjson.loads(body)
        if request["inputs"][0]["data"][0] > 1e38:
            return _answer("422 Unprocessable Entity")
        if "outputs" in request:
            return _answer("200 OK", "Failsoft-Degraded: true")
        return _answer("200 OK")

    async def on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = _headers(head)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                self.requests.append((line, headers, body))
                writer.write(self.answer(line, headers, body))
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def serving(gateway: Gateway) -> AsyncIterator[str]:
    server = await asyncio.start_server(gateway.on_connection, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.close()


# --- the requests -------------------------------------------------------------------


def test_a_poison_request_is_its_inputs_as_v2_json() -> None:
    prepared = prepare_attack(AttackRequest(kind="poison", inputs=POISON))

    assert prepared.kind == "poison"
    assert orjson.loads(prepared.body) == {"inputs": POISON}
    assert prepared.headers == [("Content-Type", "application/json")]


def test_a_deadline_request_sends_its_deadline() -> None:
    prepared = prepare_attack(AttackRequest(kind="deadline", timeout_ms=1, inputs=FEATURES))

    assert ("Failsoft-Timeout-Ms", "1") in prepared.headers
    assert orjson.loads(prepared.body) == {"inputs": FEATURES}


def test_an_outputs_request_asks_for_its_outputs_by_name() -> None:
    prepared = prepare_attack(AttackRequest(kind="outputs", outputs=["label"], inputs=FEATURES))

    assert orjson.loads(prepared.body) == {"inputs": FEATURES, "outputs": [{"name": "label"}]}


def test_extra_headers_are_sent_too() -> None:
    prepared = prepare_attack(
        AttackRequest(kind="poison", inputs=POISON, headers={"Authorization": "Bearer k"})
    )

    assert prepared.headers[-1] == ("Authorization", "Bearer k")


@pytest.mark.parametrize("size", [1024, 4097, 9 * 1024 * 1024])
def test_an_oversize_body_is_valid_json_of_exactly_its_size(size: int) -> None:
    body = prepare_attack(AttackRequest(kind="oversize", body_bytes=size)).body

    assert len(body) == size
    assert orjson.loads(body)["inputs"] == FEATURES


def test_an_oversize_body_is_built_once_per_run() -> None:
    assert oversize_body(2048) == oversize_body(2048)


# --- the attack driver --------------------------------------------------------------


async def test_the_attack_cycles_its_kinds_and_records_each_answer() -> None:
    gateway = Gateway()
    attack = Attack(rate=400, requests=[AttackRequest.model_validate(kind) for kind in KINDS])

    async with serving(gateway) as url:
        outcomes = await run_attack(
            url, attack, "/v2/models/iris/infer", (0.2, 0.25), schedule=Schedule.soon()
        )

    assert outcomes.kinds == ["poison", "deadline", "outputs", "oversize"] * 5
    np.testing.assert_allclose(outcomes.offsets, 0.2 + np.arange(20) / 400)
    assert (outcomes.start_s, outcomes.end_s) == (0.2, 0.25)
    assert attack_answers(outcomes) == {
        "poison": {"422": 5},
        "deadline": {"504": 5},
        "outputs": {"200 degraded": 5},
        "oversize": {"413": 5},
    }
    assert poison_uncontained(outcomes) == 0
    assert len(gateway.requests) == 20
    assert {line for line, _, _ in gateway.requests} == {"POST /v2/models/iris/infer HTTP/1.1"}


async def test_an_unanswered_attack_request_is_recorded_as_such() -> None:
    attack = Attack(rate=200, requests=[AttackRequest(kind="poison", inputs=POISON)])
    server = await asyncio.start_server(lambda reader, writer: writer.close(), HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        outcomes = await run_attack(
            f"http://{HOST}:{port}", attack, "/infer", (0.0, 0.02), schedule=Schedule.soon()
        )
    finally:
        server.close()

    assert outcomes.status.tolist() == [NO_ANSWER] * 4
    assert attack_answers(outcomes) == {"poison": {"no answer": 4}}
    assert poison_uncontained(outcomes) == 4


# --- readiness ----------------------------------------------------------------------


@pytest.mark.parametrize(("ready", "status"), [(True, 200), (False, 503)])
async def test_readiness_is_polled_on_schedule_through_the_run(ready: bool, status: int) -> None:
    gateway = Gateway(ready=ready)

    async with serving(gateway) as url:
        polls = await poll_readiness(url, 0.1, schedule=Schedule.soon(), interval_s=0.01)

    np.testing.assert_allclose(polls.offsets, np.arange(10) * 0.01)
    assert polls.status.tolist() == [status] * 10
    assert [line for line, _, _ in gateway.requests] == ["GET /v2/health/ready HTTP/1.1"] * 10
