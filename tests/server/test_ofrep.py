"""OFREP without a gateway: the evaluation context, ETags, and the two endpoints over an
in-memory set of flags (the real SDK and HTTP are in tests/integration/test_flags.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from failsoft.clock import ManualClock
from failsoft.control.flags import FlagSpec
from failsoft.control.tenants import TenantConfig, Tenants, key_digest
from failsoft.errors import MethodNotAllowed, NotFound, Unauthorized
from failsoft.server.ofrep import Ofrep, _Refused, context_of, etag_matches

KEY = "fsk_" + "k" * 40


class Flags:
    def __init__(self, specs: dict[str, Any]) -> None:
        self.specs = {key: FlagSpec.model_validate(spec) for key, spec in specs.items()}

    def list(self) -> dict[str, FlagSpec]:
        return dict(sorted(self.specs.items()))


FLAGS = Flags(
    {
        "banner": {
            "kind": "string",
            "value": "blue",
            "rules": [{"when": {"header": {"X-Beta": ["1"]}}, "value": "green"}],
        },
        "weight": {"kind": "float", "value": 2},
        "failsoft.halt.iris": {"kind": "boolean", "value": True},
    }
)


def ofrep(require_keys: bool = False) -> Ofrep:
    tenants = Tenants(
        {"acme": TenantConfig(key_sha256=key_digest(KEY))}, require_keys, ManualClock()
    )
    return Ofrep(lambda: FLAGS, lambda: tenants, lambda: 1_800_000_000.0)  # type: ignore[arg-type,return-value]


async def call(
    service: Ofrep,
    path: list[str],
    body: Any,
    *,
    method: str = "POST",
    authorization: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, Any, dict[bytes, bytes]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)

    async def read(limit: int) -> bytes:
        return raw

    reply = await service.handle(method, path, authorization, headers or [], read)
    return reply.status, orjson.loads(reply.body) if reply.body else None, dict(reply.headers)


FLAGS_PATH = ["v1", "evaluate", "flags"]


def test_the_context_maps_targeting_key_tenant_and_headers() -> None:
    context, keyed = context_of(
        orjson.dumps(
            {"context": {"targetingKey": "u1", "tenant": "acme", "headers": {"X-Beta": "1"}}}
        ),
        None,
    )
    assert (context.key, context.tenant, dict(context.headers), keyed) == (
        "u1",
        "acme",
        {"x-beta": "1"},
        True,
    )
    assert context_of(b"", "acme")[0].tenant == "acme"
    assert context_of(b"{}", None)[1] is False


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "PARSE_ERROR"),
        (b"[1]", "PARSE_ERROR"),
        (b'{"context": 3}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 3}}', "INVALID_CONTEXT"),
        (b'{"context": {"tenant": ["a"]}}', "INVALID_CONTEXT"),
        (b'{"context": {"headers": {"a": 1}}}', "INVALID_CONTEXT"),
    ],
)
def test_a_bad_body_or_context_has_its_error_code(body: bytes, code: str) -> None:
    with pytest.raises(_Refused) as refused:
        context_of(body, None)
    assert refused.value.code == code


def test_an_api_key_is_the_tenant_and_cannot_claim_another() -> None:
    with pytest.raises(_Refused, match="another tenant"):
        context_of(b'{"context": {"tenant": "globex"}}', "acme")
    assert context_of(b'{"context": {"tenant": "acme"}}', "acme")[0].tenant == "acme"


def test_etags_compare_weakly_and_in_lists() -> None:
    assert etag_matches('"abc"', '"abc"')
    assert etag_matches('W/"abc"', '"abc"')
    assert etag_matches('"x", "abc"', '"abc"')
    assert etag_matches("*", '"abc"')
    assert not etag_matches('"abd"', '"abc"')
    assert not etag_matches(None, '"abc"')


async def test_single_evaluation() -> None:
    service = ofrep()
    status, body, _ = await call(
        service, [*FLAGS_PATH, "banner"], {"context": {"headers": {"x-beta": "1"}}}
    )
    assert (status, body) == (
        200,
        {
            "key": "banner",
            "value": "green",
            "reason": "TARGETING_MATCH",
            "variant": "rule-0",
            "metadata": {"kind": "string"},
        },
    )
    status, body, _ = await call(service, [*FLAGS_PATH, "weight"], {})
    assert body["value"] == 2.0
    assert isinstance(body["value"], float)
    status, body, _ = await call(service, [*FLAGS_PATH, "failsoft.halt.iris"], {})
    assert (status, body["errorCode"]) == (404, "FLAG_NOT_FOUND")
    status, body, _ = await call(service, [*FLAGS_PATH, "banner"], b"{")
    assert (status, body["key"], body["errorCode"]) == (400, "banner", "PARSE_ERROR")


async def test_bulk_evaluation_with_an_etag() -> None:
    service = ofrep()
    status, body, headers = await call(service, FLAGS_PATH, {})
    assert status == 200
    assert [item["key"] for item in body["flags"]] == ["banner", "weight"]
    etag = headers[b"etag"]
    again = await call(service, FLAGS_PATH, {}, headers=[(b"if-none-match", etag)])
    assert again[0] == 304
    assert again[1] is None
    assert again[2][b"etag"] == etag
    status, body, _ = await call(service, FLAGS_PATH, {"context": []})
    assert (status, body["errorCode"]) == (400, "INVALID_CONTEXT")


async def test_routes_methods_and_keys() -> None:
    with pytest.raises(NotFound):
        await call(ofrep(), ["v1", "evaluate"], {})
    with pytest.raises(MethodNotAllowed):
        await call(ofrep(), FLAGS_PATH, {}, method="GET")
    with pytest.raises(Unauthorized):
        await call(ofrep(require_keys=True), FLAGS_PATH, {})
    with pytest.raises(Unauthorized):
        await call(ofrep(), FLAGS_PATH, {}, authorization="Bearer not-a-key")
    status, body, _ = await call(
        ofrep(require_keys=True), [*FLAGS_PATH, "banner"], {}, authorization=f"Bearer {KEY}"
    )
    assert (status, body["value"]) == (200, "blue")
