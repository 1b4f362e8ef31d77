"""The flags over the OpenFeature Remote Evaluation Protocol (OFREP), so any OpenFeature
SDK with an OFREP provider reads failsoft's flags.

    POST /ofrep/v1/evaluate/flags/KEY    one flag   -> 200 {key, value, reason, variant, metadata}
                                                       404 {key, errorCode: FLAG_NOT_FOUND, ...}
                                                       400 {key, errorCode: PARSE_ERROR |
                                                            INVALID_CONTEXT |
                                                            TARGETING_KEY_MISSING, errorDetails}
    POST /ofrep/v1/evaluate/flags        every flag -> 200 {flags: [...]} with an ETag;
                                                       304 when If-None-Match has that ETag;
                                                       400 {errorCode, errorDetails}

The request body is ``{"context": {...}}`` (both optional). What failsoft
targets is taken from the context:

- ``targetingKey``: the sticky key of percentage rules (as ``Failsoft-Key``
  is on the data plane). A flag with a percentage rule needs one: without
  it that flag answers TARGETING_KEY_MISSING;
- ``tenant``: the tenant a tenant rule matches. A caller that sends a tenant
  API key (``Authorization: Bearer <key>``) is that tenant, whatever the
  context says (a different ``tenant`` is INVALID_CONTEXT);
- ``headers``: an object of header name -> value that header rules match
  (names are case-insensitive).

Other attributes are accepted and ignored. Reasons are OpenFeature's:
STATIC (no rule matched), TARGETING_MATCH, SPLIT (a percentage rule),
DISABLED (past its expiry); ``variant`` is ``default`` or ``rule-N``;
``metadata.kind`` is the flag's kind. No type is asked for or sent back
beyond the JSON value (OFREP leaves the check to the provider, whose SDK
answers TYPE_MISMATCH when it asked for another type).

Access, safe by default: the same keys as inference. With
``server.require_keys`` every call needs a tenant key (401 otherwise); a key
that is sent must be valid whatever the setting; the admin token is not a
key here. The gateway's own switches (keys under ``failsoft.``) are never
served over OFREP: they are operators' controls, read through the admin
API; to an OFREP client they do not exist (FLAG_NOT_FOUND, and absent from
bulk answers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from failsoft.control.flag_service import FlagService
from failsoft.control.flags import PREFIX, Context, FlagSpec, evaluate
from failsoft.control.tenants import Tenants
from failsoft.errors import MethodNotAllowed, NotFound

OFREP_BODY_LIMIT = 64 * 1024
ReadBody = Callable[[int], Awaitable[bytes]]
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: Headers


class _Refused(Exception):
    """A request OFREP answers 400 with an error code."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _json(data: Any) -> bytes:
    return orjson.dumps(data)


def served(key: str) -> bool:
    """Is ``key`` a flag OFREP serves (not one of the gateway's switches)?"""
    return not key.startswith(PREFIX)


def context_of(body: bytes, authenticated_tenant: str | None) -> tuple[Context, bool]:
    """The evaluation context of a request body, and whether it had a targeting key."""
    if not body.strip():
        return Context(tenant=authenticated_tenant), False
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _Refused("PARSE_ERROR", f"the body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise _Refused("PARSE_ERROR", 'the body must be a JSON object: {"context": {...}}')
    context = data.get("context", {})
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise _Refused("INVALID_CONTEXT", "context must be a JSON object")
    key = context.get("targetingKey")
    if key is not None and not isinstance(key, str):
        raise _Refused("INVALID_CONTEXT", "context.targetingKey must be a string")
    tenant = context.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise _Refused("INVALID_CONTEXT", "context.tenant must be a string")
    if authenticated_tenant is not None:
        if tenant is not None and tenant != authenticated_tenant:
            raise _Refused(
                "INVALID_CONTEXT",
                "context.tenant names another tenant than the API key's: leave it out",
            )
        tenant = authenticated_tenant
    headers = context.get("headers", {})
    if headers is None:
        headers = {}
    if not isinstance(headers, dict) or not all(
        isinstance(value, str) for value in headers.values()
    ):
        raise _Refused("INVALID_CONTEXT", "context.headers must map header names to strings")
    lowered = {str(name).lower(): value for name, value in headers.items()}
    return Context(key or "", tenant, lowered), key is not None and key != ""


def _needs_key(spec: FlagSpec) -> bool:
    return any(rule.when.percent is not None for rule in spec.rules)


def evaluation(
    key: str, spec: FlagSpec, context: Context, has_key: bool, now: float
) -> tuple[bool, dict[str, Any]]:
    """(success, the OFREP object) for one flag."""
    if _needs_key(spec) and not has_key:
        return False, {
            "key": key,
            "errorCode": "TARGETING_KEY_MISSING",
            "errorDetails": "this flag has a percentage rule: send context.targetingKey",
        }
    found = evaluate(key, spec, context, now)
    value = found.value
    if spec.kind == "float" and type(value) is int:
        value = float(value)  # a whole number is still a float to the SDK
    return True, {
        "key": key,
        "value": value,
        "reason": found.reason,
        "variant": found.variant,
        "metadata": {"kind": spec.kind},
    }


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's weak comparison of If-None-Match with the current ETag."""
    if if_none_match is None:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


class Ofrep:
    """The two OFREP evaluation endpoints over one gateway's flags."""

    def __init__(
        self,
        flags: Callable[[], FlagService | None],
        tenants: Callable[[], Tenants],
        wall: Callable[[], float],
    ) -> None:
        self._flags = flags
        self._tenants = tenants
        self._wall = wall

    async def handle(
        self,
        method: str,
        parts: list[str],
        authorization: str | None,
        headers: Iterable[tuple[bytes, bytes]],
        read_body: ReadBody,
    ) -> Reply:
        """``parts``: the path after /ofrep."""
        if parts[:3] != ["v1", "evaluate", "flags"] or len(parts) > 4:
            raise NotFound(f"no OFREP route /ofrep/{'/'.join(parts)}")
        if method != "POST":
            raise MethodNotAllowed(f"{method} is not allowed here; use POST", "POST")
        tenant = self._tenants().authenticate(authorization)  # 401 before reading the body
        body = await read_body(OFREP_BODY_LIMIT)
        name = tenant.name if tenant is not None else None
        if len(parts) == 4:
            return self._single(parts[3], body, name)
        if_none_match = next(
            (value.decode("latin-1") for field, value in headers if field == b"if-none-match"),
            None,
        )
        return self._bulk(body, name, if_none_match)

    def _in_force(self) -> dict[str, FlagSpec]:
        service = self._flags()
        if service is None:
            return {}
        return {key: spec for key, spec in service.list().items() if served(key)}

    def _single(self, key: str, body: bytes, tenant: str | None) -> Reply:
        try:
            context, has_key = context_of(body, tenant)
        except _Refused as refused:
            failure = {"key": key, "errorCode": refused.code, "errorDetails": refused.details}
            return Reply(400, _json(failure), [])
        spec = self._in_force().get(key)
        if spec is None:
            missing = {
                "key": key,
                "errorCode": "FLAG_NOT_FOUND",
                "errorDetails": f"there is no flag {key!r}",
            }
            return Reply(404, _json(missing), [])
        ok, answer = evaluation(key, spec, context, has_key, self._wall())
        return Reply(200 if ok else 400, _json(answer), [])

    def _bulk(self, body: bytes, tenant: str | None, if_none_match: str | None) -> Reply:
        try:
            context, has_key = context_of(body, tenant)
        except _Refused as refused:
            failure = {"errorCode": refused.code, "errorDetails": refused.details}
            return Reply(400, _json(failure), [])
        now = self._wall()
        flags = [
            evaluation(key, spec, context, has_key, now)[1]
            for key, spec in self._in_force().items()
        ]
        answer = _json({"flags": flags})
        etag = etag_of(answer)
        headers: Headers = [(b"etag", etag.encode())]
        if etag_matches(if_none_match, etag):
            return Reply(304, b"", headers)
        return Reply(200, answer, headers)
