"""Flags, kill switches and safe halt on real gateways: the commands and the admin API, a
switch in force before its call returns, refusals that change nothing, an expiry that
reverts on its own (audited), flags kept across a restart, two gateways sharing a
PostgreSQL store, and OpenFeature: single evaluation through the real `openfeature-sdk`
with its OFREP provider, bulk evaluation over HTTP against the OFREP specification.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from failsoft.cli import main
from failsoft.control.tenants import key_digest
from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN, REPO
from tests.store.conftest import IN_CI, POSTGRES_URL

pytestmark = pytest.mark.integration

ROW = [5.1, 3.5, 1.4, 0.2]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TENANT_KEY = "fsk_" + "t" * 40


def config(demo_dir: Path, *, fallback: str = "[{version: v2}]", store: str = "") -> str:
    return f"""
models:
  iris:
    inputs:  [{{name: features, datatype: FP32, shape: [-1, 4]}}]
    outputs:
      - {{name: label, datatype: INT64, shape: [-1]}}
      - {{name: probabilities, datatype: FP32, shape: [-1, 3]}}
    versions:
      v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}
      v2: {{backend: onnx, path: {demo_dir}/iris-v2.onnx}}
    default_version: v1
    fallback: {fallback}
tenants:
  acme: {{key_sha256: {key_digest(TENANT_KEY)}}}
{store}"""


class Gateways:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[ServerProcess] = []
        self._names = itertools.count(1)

    def start(self, text_: str, directory: Path | None = None) -> ServerProcess:
        folder = directory or self.root / f"gw{next(self._names)}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "failsoft.yaml"
        path.write_text(text_)
        env = {
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        server = ServerProcess(path, "--data-dir", str(folder / "data"), env=env).start()
        self.started.append(server)
        return server


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Gateways]:
    made = Gateways(tmp_path)
    yield made
    for server in made.started:
        server.stop()


def cli(server: ServerProcess, *args: str) -> Result:
    result = CliRunner().invoke(
        main, [*args, "--url", server.url], env={"FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def ok(server: ServerProcess, *args: str) -> Result:
    result = cli(server, *args)
    assert result.exit_code == 0, result.output
    return result


def infer(server: ServerProcess, **headers: str) -> httpx.Response:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    return httpx.post(f"{server.url}/v2/models/iris/infer", json=body, headers=headers, timeout=10)


def served_by(server: ServerProcess, **headers: str) -> str:
    answer = infer(server, **headers)
    assert answer.status_code == 200, answer.text
    return answer.headers["failsoft-served-by"]


def audit(server: ServerProcess) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.url}/admin/audit?limit=1000", headers=AUTH, timeout=10)
    entries: list[dict[str, Any]] = answer.json()["entries"]
    return entries


def test_switches_and_halts_from_the_commands_act_at_once(
    gateways: Gateways, demo_dir: Path
) -> None:
    server = gateways.start(config(demo_dir))
    assert served_by(server) == "iris/v1/r0"

    started = time.perf_counter()
    switched = ok(server, "switch", "iris/v1", "off")
    took = time.perf_counter() - started
    assert took < 1.0
    assert f"iris/v1 switched off on {server.url}" in switched.stdout
    assert served_by(server) == "iris/v1/fallback:version:v2"  # the very next request
    assert infer(server).headers["failsoft-degraded"] == "true"

    halted = ok(server, "halt", "iris/v2")
    assert "iris/v2 halted" in halted.stdout
    stopped = infer(server)  # v1 off, its only fallback halted: a clean 503, never a guess
    assert stopped.status_code == 503
    assert stopped.headers["retry-after"] == "1"
    assert "iris/v1 is switched off by an operator" in stopped.json()["error"]
    direct = httpx.post(
        f"{server.url}/v2/models/iris/versions/v2/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]},
        timeout=10,
    )
    assert direct.status_code == 503
    assert "iris/v2 is halted by an operator" in direct.json()["error"]

    listed = ok(server, "flag", "list").stdout.splitlines()
    assert listed[0].split() == ["KEY", "KIND", "VALUE", "RULES", "EXPIRES", "SWITCH"]
    assert listed[1].split() == [
        "failsoft.disable.iris.v1",
        "boolean",
        "true",
        "switch",
        "off",
        "iris/v1",
    ]
    assert listed[2].split() == ["failsoft.halt.iris.v2", "boolean", "true", "halt", "iris/v2"]
    shown = orjson.loads(ok(server, "flag", "get", "failsoft.halt.iris.v2", "--json").stdout)
    assert shown == {
        "key": "failsoft.halt.iris.v2",
        "spec": {"kind": "boolean", "value": True},
        "switch": "halt iris/v2",
    }

    assert "iris/v2 is no longer halted" in ok(server, "halt", "iris/v2", "--off").stdout
    assert "iris/v2 was not halted" in ok(server, "halt", "iris/v2", "--off").stdout
    assert "iris/v1 is on again" in ok(server, "switch", "iris/v1", "on").stdout
    assert served_by(server) == "iris/v1/r0"
    assert ok(server, "flag", "list").stdout == "no flags set\n"

    # A targeted switch: only tenant acme's requests are kept off v1.
    ok(server, "flag", "set", "failsoft.disable.iris.v1", "true", "--tenant", "acme")
    assert served_by(server, Authorization=f"Bearer {TENANT_KEY}").endswith("fallback:version:v2")
    assert served_by(server) == "iris/v1/r0"

    flips = [(e["action"], e["target"], e["actor"]) for e in audit(server) if "flag" in e["action"]]
    assert flips == [
        ("flag.set", "flag:failsoft.disable.iris.v1", "admin"),
        ("flag.set", "flag:failsoft.halt.iris.v2", "admin"),
        ("flag.cleared", "flag:failsoft.halt.iris.v2", "admin"),
        ("flag.cleared", "flag:failsoft.disable.iris.v1", "admin"),
        ("flag.set", "flag:failsoft.disable.iris.v1", "admin"),
    ]


def test_a_whole_model_halt_answers_from_the_tiers_that_are_not_versions(
    gateways: Gateways, demo_dir: Path
) -> None:
    server = gateways.start(
        config(demo_dir, fallback='[{version: v2}, {python: "failsoft.demo:iris_rules"}]')
    )
    ok(server, "halt", "iris")
    answer = infer(server)
    assert answer.status_code == 200
    assert answer.headers["failsoft-served-by"] == "iris/v1/fallback:heuristic"
    assert answer.headers["failsoft-degraded"] == "true"


def test_bad_flags_are_refused_naming_the_field_and_nothing_changes(
    gateways: Gateways, demo_dir: Path
) -> None:
    server = gateways.start(config(demo_dir))
    ok(server, "flag", "set", "checkout.banner", "blue")
    before = len(audit(server))

    unknown = cli(server, "halt", "iris/v9")
    assert unknown.exit_code == 1
    assert "model 'iris' has no version 'v9' (versions: v1, v2)" in unknown.stderr
    feature = cli(server, "flag", "set", "failsoft.feature.iris.turbo", "false")
    assert feature.exit_code == 1
    assert "not 'turbo'" in feature.stderr
    for body, message in [
        ({"kind": "boolean", "value": "yes"}, "value: 'yes' is not a boolean"),
        ({"kind": "boolean", "value": True, "expires_at": time.time() - 5}, "is in the past"),
        ({"kind": "string"}, "value: Field required"),
    ]:
        refused = httpx.put(
            f"{server.url}/admin/flags/checkout.banner", json=body, headers=AUTH, timeout=10
        )
        assert refused.status_code == 400
        assert message in refused.json()["error"]
    reader = httpx.post(
        f"{server.url}/admin/tokens", json={"name": "reader", "scopes": ["read"]}, headers=AUTH
    ).json()["token"]
    forbidden = httpx.put(
        f"{server.url}/admin/flags/checkout.banner",
        json={"kind": "string", "value": "red"},
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert forbidden.status_code == 403
    readable = httpx.get(f"{server.url}/admin/flags", headers={"Authorization": f"Bearer {reader}"})
    assert readable.status_code == 200

    assert [entry["key"] for entry in readable.json()["flags"]] == ["checkout.banner"]
    assert readable.json()["flags"][0]["spec"] == {"kind": "string", "value": "blue"}
    assert len(audit(server)) == before + 1  # the token; no flag change
    assert served_by(server) == "iris/v1/r0"


def test_an_expiry_reverts_on_its_own_and_a_restart_keeps_the_flags(
    gateways: Gateways, demo_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "gateway"
    server = gateways.start(config(demo_dir), folder)
    ok(server, "halt", "iris/v1", "--expires-in", "2s")
    ok(server, "switch", "iris/v2", "off")
    assert infer(server).status_code == 503  # v1 halted, v2 (its only fallback) off
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and infer(server).status_code != 200:
        time.sleep(0.1)
    answer = infer(server)
    assert answer.headers["failsoft-served-by"] == "iris/v1/r0"  # back by itself
    expired = [e for e in audit(server) if e["action"] == "flag.cleared"]
    assert [(e["target"], e["actor"], e["detail"]) for e in expired] == [
        ("flag:failsoft.halt.iris.v1", "failsoft", {"reason": "expired"})
    ]

    server.stop()
    restarted = gateways.start(config(demo_dir), folder)
    assert (
        ok(restarted, "flag", "list").stdout.splitlines()[1].startswith("failsoft.disable.iris.v2")
    )
    direct = httpx.post(
        f"{restarted.url}/v2/models/iris/versions/v2/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]},
        timeout=10,
    )
    assert direct.status_code == 503


# -- two gateways, one PostgreSQL store ------------------------------------------------


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    engine: Engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as error:
        engine.dispose()
        reason = f"PostgreSQL is not reachable at {POSTGRES_URL}: {str(error).splitlines()[0]}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    schema = f"failsoft_flags_{secrets.token_hex(4)}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).set(
        drivername="postgresql+psycopg", query={"options": f"-csearch_path={schema}"}
    )
    yield url.render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def test_gateways_sharing_a_store_follow_each_others_flags(
    gateways: Gateways, demo_dir: Path, postgres_schema: str
) -> None:
    store = f"store: {{url: '{postgres_schema}', poll_s: 0.2}}\n"
    first = gateways.start(config(demo_dir, store=store))
    second = gateways.start(config(demo_dir, store=store))

    ok(first, "switch", "iris/v1", "off")
    assert served_by(first) == "iris/v1/fallback:version:v2"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and served_by(second) == "iris/v1/r0":
        time.sleep(0.05)
    assert served_by(second) == "iris/v1/fallback:version:v2"

    ok(second, "switch", "iris/v1", "on")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and served_by(first) != "iris/v1/r0":
        time.sleep(0.05)
    assert served_by(first) == "iris/v1/r0"


# -- OpenFeature ------------------------------------------------------------------------


@pytest.fixture
def flagged(gateways: Gateways, demo_dir: Path) -> ServerProcess:
    server = gateways.start(config(demo_dir))
    specs = {
        "checkout.banner": {
            "kind": "string",
            "value": "blue",
            "rules": [{"when": {"tenants": ["acme"]}, "value": "red"}],
        },
        "search.limit": {"kind": "integer", "value": 20},
        "ranker.weight": {"kind": "float", "value": 1},
        "ranker.config": {"kind": "object", "value": {"depth": 3}},
        "new.ranker": {
            "kind": "boolean",
            "value": False,
            "rules": [{"when": {"header": {"X-Canary": ["yes"]}}, "value": True}],
        },
        "half": {
            "kind": "boolean",
            "value": False,
            "rules": [{"when": {"percent": 50}, "value": True}],
        },
        "failsoft.halt.iris.v2": {"kind": "boolean", "value": True},
    }
    for key, spec in specs.items():
        answer = httpx.put(f"{server.url}/admin/flags/{key}", json=spec, headers=AUTH)
        assert answer.status_code == 200, answer.text
    return server


def test_single_evaluation_through_the_openfeature_sdk(flagged: ServerProcess) -> None:
    from openfeature import api
    from openfeature.contrib.provider.ofrep import OFREPProvider
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.exception import ErrorCode
    from openfeature.flag_evaluation import Reason

    api.set_provider(OFREPProvider(flagged.url), domain="failsoft")
    client = api.get_client("failsoft")
    try:
        banner = client.get_string_details("checkout.banner", "none")
        assert (banner.value, banner.reason, banner.variant) == ("blue", Reason.STATIC, "default")
        acme = client.get_string_details(
            "checkout.banner", "none", EvaluationContext(attributes={"tenant": "acme"})
        )
        assert (acme.value, acme.reason, acme.variant) == ("red", Reason.TARGETING_MATCH, "rule-0")
        assert client.get_integer_value("search.limit", 0) == 20
        assert client.get_float_value("ranker.weight", 0.0) == 1.0
        assert client.get_object_value("ranker.config", {}) == {"depth": 3}
        canary = EvaluationContext(attributes={"headers": {"x-canary": "yes"}})
        assert client.get_boolean_value("new.ranker", False, canary) is True
        assert client.get_boolean_value("new.ranker", False) is False

        split = [
            client.get_boolean_value("half", False, EvaluationContext(targeting_key=f"user-{n}"))
            for n in range(200)
        ]
        assert 60 < sum(split) < 140  # about half, and sticky:
        assert split == [
            client.get_boolean_value("half", False, EvaluationContext(targeting_key=f"user-{n}"))
            for n in range(200)
        ]
        no_key = client.get_boolean_details("half", False)
        assert no_key.error_code == ErrorCode.TARGETING_KEY_MISSING
        assert no_key.value is False

        missing = client.get_boolean_details("no.such.flag", True)
        assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
        switch = client.get_boolean_details("failsoft.halt.iris.v2", False)  # never served here
        assert switch.error_code == ErrorCode.FLAG_NOT_FOUND
        mismatch = client.get_integer_details("checkout.banner", 7)
        assert (mismatch.value, mismatch.error_code) == (7, ErrorCode.TYPE_MISMATCH)
    finally:
        api.shutdown()


def ofrep(server: ServerProcess, path: str, body: Any = None, **headers: str) -> httpx.Response:
    payload = b"" if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(
        f"{server.url}/ofrep/v1/evaluate/flags{path}",
        content=payload,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )


def test_bulk_evaluation_over_http_against_the_specification(flagged: ServerProcess) -> None:
    answer = ofrep(flagged, "", {"context": {"targetingKey": "user-7", "tenant": "acme"}})
    assert answer.status_code == 200
    etag = answer.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    flags = {item["key"]: item for item in answer.json()["flags"]}
    assert set(flags) == {
        "checkout.banner",
        "half",
        "new.ranker",
        "ranker.config",
        "ranker.weight",
        "search.limit",
    }  # no failsoft.* switch
    assert flags["checkout.banner"] == {
        "key": "checkout.banner",
        "value": "red",
        "reason": "TARGETING_MATCH",
        "variant": "rule-0",
        "metadata": {"kind": "string"},
    }
    assert flags["ranker.weight"]["value"] == 1.0
    assert isinstance(flags["ranker.weight"]["value"], float)
    assert flags["half"]["reason"] in ("SPLIT", "STATIC")
    for item in flags.values():  # evaluationSuccess: key, reason, variant, value
        assert {"key", "reason", "variant", "value"} <= set(item)

    same = ofrep(
        flagged,
        "",
        {"context": {"targetingKey": "user-7", "tenant": "acme"}},
        **{"If-None-Match": etag},
    )
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == etag
    weak = ofrep(
        flagged,
        "",
        {"context": {"targetingKey": "user-7", "tenant": "acme"}},
        **{"If-None-Match": f'"x", W/{etag}'},
    )
    assert weak.status_code == 304
    other = ofrep(flagged, "", {"context": {"targetingKey": "user-7"}}, **{"If-None-Match": etag})
    assert other.status_code == 200  # another context, another answer
    httpx.put(
        f"{flagged.url}/admin/flags/search.limit",
        json={"kind": "integer", "value": 50},
        headers=AUTH,
    )
    changed = ofrep(
        flagged,
        "",
        {"context": {"targetingKey": "user-7", "tenant": "acme"}},
        **{"If-None-Match": etag},
    )
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag

    no_key = ofrep(flagged, "", {})
    half = next(item for item in no_key.json()["flags"] if item["key"] == "half")
    assert half["errorCode"] == "TARGETING_KEY_MISSING"  # evaluationFailure, in the list

    broken = ofrep(flagged, "", b"{not json")
    assert broken.status_code == 400
    assert broken.json()["errorCode"] == "PARSE_ERROR"
    assert broken.json()["errorDetails"]
    bad_context = ofrep(flagged, "", {"context": [1]})
    assert (bad_context.status_code, bad_context.json()["errorCode"]) == (400, "INVALID_CONTEXT")


def test_single_evaluation_errors_over_http(flagged: ServerProcess) -> None:
    missing = ofrep(flagged, "/nope", {})
    assert missing.status_code == 404
    assert missing.json() == {
        "key": "nope",
        "errorCode": "FLAG_NOT_FOUND",
        "errorDetails": "there is no flag 'nope'",
    }
    parse = ofrep(flagged, "/search.limit", b"[")
    assert (parse.status_code, parse.json()["key"], parse.json()["errorCode"]) == (
        400,
        "search.limit",
        "PARSE_ERROR",
    )
    context = ofrep(flagged, "/search.limit", {"context": {"targetingKey": 5}})
    assert (context.status_code, context.json()["errorCode"]) == (400, "INVALID_CONTEXT")
    assert httpx.get(f"{flagged.url}/ofrep/v1/evaluate/flags/search.limit").status_code == 405

    # A tenant key makes the caller that tenant; it cannot claim another.
    keyed = ofrep(flagged, "/checkout.banner", {}, Authorization=f"Bearer {TENANT_KEY}")
    assert keyed.json()["value"] == "red"
    claimed = ofrep(
        flagged,
        "/checkout.banner",
        {"context": {"tenant": "globex"}},
        Authorization=f"Bearer {TENANT_KEY}",
    )
    assert (claimed.status_code, claimed.json()["errorCode"]) == (400, "INVALID_CONTEXT")
    wrong = ofrep(flagged, "/checkout.banner", {}, Authorization=f"Bearer {ADMIN_TOKEN}")
    assert wrong.status_code == 401  # the admin token is no key here


def test_with_keys_required_ofrep_needs_a_tenant_key(gateways: Gateways, demo_dir: Path) -> None:
    server = gateways.start(config(demo_dir) + "server: {require_keys: true}\n")
    httpx.put(
        f"{server.url}/admin/flags/banner", json={"kind": "string", "value": "x"}, headers=AUTH
    )
    assert ofrep(server, "/banner", {}).status_code == 401
    assert ofrep(server, "", {}).status_code == 401
    keyed = ofrep(server, "", {}, Authorization=f"Bearer {TENANT_KEY}")
    assert keyed.status_code == 200
    assert [item["key"] for item in keyed.json()["flags"]] == ["banner"]
