from __future__ import annotations

import asyncio
import base64
import hashlib
import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from failsoft.clock import ManualClock
from failsoft.control.tenants import (
    Tenant,
    TenantConfig,
    Tenants,
    TokenBucket,
    key_digest,
    key_entry_yaml,
    new_key,
)
from failsoft.errors import BadRequest, QuotaExceeded, Unauthorized

ACME_KEY = "fsk_acme-test-key"
BETA_KEY = "fsk_beta-test-key"


def config(key: str = ACME_KEY, **options: Any) -> TenantConfig:
    return TenantConfig(key_sha256=key_digest(key), **options)


class Harness:
    def __init__(self, require_keys: bool = False, **options: Any) -> None:
        self.clock = ManualClock()
        self.tenants = Tenants(
            {"acme": config(**options), "beta": config(BETA_KEY, priority="critical")},
            require_keys=require_keys,
            clock=self.clock,
        )
        self.acme = Tenant("acme", "default")

    def refusal(self, rows: int) -> QuotaExceeded | None:
        """None when acme's request is admitted, else the 429 it got."""
        try:
            self.tenants.admit(self.acme, rows)
        except QuotaExceeded as error:
            return error
        return None

    def admit_until_refused(self, rows: int = 1, limit: int = 10_000) -> tuple[int, QuotaExceeded]:
        for admitted in range(limit):
            error = self.refusal(rows)
            if error is not None:
                return admitted, error
        raise AssertionError(f"still admitting after {limit}")


# --- keys ----------------------------------------------------------------------------


def test_new_key_has_the_prefix_and_32_random_bytes() -> None:
    key = new_key()
    assert key.startswith("fsk_")
    body = key.removeprefix("fsk_")
    assert len(body) == 43
    assert "=" not in body
    assert len(base64.urlsafe_b64decode(body + "=")) == 32


def test_new_keys_are_unique() -> None:
    keys = {new_key() for _ in range(2000)}
    assert len(keys) == 2000


def test_key_digest_is_the_hex_sha256_of_the_utf8_bytes() -> None:
    assert key_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert key_digest("é") == hashlib.sha256(b"\xc3\xa9").hexdigest()
    assert len(key_digest(new_key())) == 64


# --- config --------------------------------------------------------------------------


def test_config_defaults() -> None:
    options = config()
    assert options.requests_per_s is None
    assert options.rows_per_s is None
    assert options.burst_s == 1.0
    assert options.priority == "default"


def test_uppercase_digest_is_normalised() -> None:
    digest = key_digest(ACME_KEY)
    assert TenantConfig(key_sha256=digest.upper()).key_sha256 == digest


@pytest.mark.parametrize(
    "options",
    [
        {"key_sha256": "abc"},
        {"key_sha256": "g" * 64},
        {"key_sha256": "a" * 65},
        {"requests_per_s": 0},
        {"requests_per_s": -1},
        {"requests_per_s": math.inf},
        {"rows_per_s": math.nan},
        {"burst_s": 0},
        {"burst_s": 3601},
        {"requests_per_s": 0.5},  # a bucket of half a request admits nothing
        {"rows_per_s": 10, "burst_s": 0.05},
        {"priority": "urgent"},
        {"requests_per_sec": 10},
    ],
)
def test_invalid_config_is_rejected(options: dict[str, object]) -> None:
    fields: dict[str, object] = {"key_sha256": key_digest(ACME_KEY), **options}
    with pytest.raises(ValidationError):
        TenantConfig(**fields)  # type: ignore[arg-type]


def test_a_key_in_place_of_its_hash_is_called_out() -> None:
    with pytest.raises(ValidationError, match="this is an API key, not its hash"):
        TenantConfig(key_sha256=new_key())


def test_a_bucket_below_one_request_names_the_fix() -> None:
    with pytest.raises(ValidationError, match=r"requests_per_s x burst_s = 0.5 must be >= 1"):
        config(requests_per_s=0.5)


def test_boundary_config_is_accepted() -> None:
    options = config(requests_per_s=0.5, rows_per_s=1, burst_s=3600)
    assert options.burst_s == 3600


# --- authenticate ------------------------------------------------------------------------


def test_no_header_is_anonymous_when_keys_are_optional() -> None:
    assert Harness(require_keys=False).tenants.authenticate(None) is None


def test_no_header_is_refused_when_keys_are_required() -> None:
    with pytest.raises(Unauthorized, match=r"send Authorization: Bearer <tenant key>") as caught:
        Harness(require_keys=True).tenants.authenticate(None)
    assert caught.value.status == 401


@pytest.mark.parametrize("require_keys", [False, True])
def test_a_known_key_finds_its_tenant(require_keys: bool) -> None:
    tenants = Harness(require_keys=require_keys).tenants
    assert tenants.authenticate(f"Bearer {ACME_KEY}") == Tenant("acme", "default")
    assert tenants.authenticate(f"Bearer {BETA_KEY}") == Tenant("beta", "critical")


@pytest.mark.parametrize(
    "header", [f"bearer {ACME_KEY}", f"BEARER {ACME_KEY}", f"  Bearer   {ACME_KEY}  "]
)
def test_scheme_is_case_insensitive_and_spaces_are_forgiven(header: str) -> None:
    assert Harness().tenants.authenticate(header) == Tenant("acme", "default")


@pytest.mark.parametrize("require_keys", [False, True])
def test_an_unknown_key_is_refused_never_anonymous(require_keys: bool) -> None:
    with pytest.raises(Unauthorized, match="unknown API key"):
        Harness(require_keys=require_keys).tenants.authenticate("Bearer fsk_nobody")


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", ACME_KEY, f"Basic {ACME_KEY}", f"Bearer {ACME_KEY} extra", "Token x"],
)
def test_a_malformed_header_is_refused_without_echoing_it(header: str) -> None:
    with pytest.raises(Unauthorized, match="malformed Authorization header") as caught:
        Harness().tenants.authenticate(header)
    assert ACME_KEY not in caught.value.message


def test_duplicate_key_digests_are_refused_naming_both() -> None:
    with pytest.raises(ValueError, match=r"tenants 'acme' and 'copy' have the same key_sha256"):
        Tenants({"acme": config(), "copy": config()}, require_keys=True, clock=ManualClock())


# --- token bucket --------------------------------------------------------------------------


async def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=2, capacity=4, clock=clock)
    assert bucket.tokens == 4
    assert bucket.take(4) == 0.0
    assert bucket.tokens == 0
    await clock.advance(0.5)
    assert bucket.tokens == pytest.approx(1)
    assert bucket.take(2) == pytest.approx(0.5)
    assert bucket.tokens == pytest.approx(1)  # a refused take removes nothing


async def test_bucket_never_holds_more_than_its_capacity() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=10, capacity=3, clock=clock)
    bucket.take(1)
    await clock.advance(3600)
    assert bucket.tokens == 3
    bucket.give_back(5)
    assert bucket.tokens == 3


def test_more_than_the_capacity_can_never_be_taken() -> None:
    bucket = TokenBucket(rate=10, capacity=3, clock=ManualClock())
    assert not bucket.fits(3.5)
    assert bucket.take(3.5) == math.inf
    assert bucket.tokens == 3


def test_give_back_refunds() -> None:
    bucket = TokenBucket(rate=1, capacity=5, clock=ManualClock())
    bucket.take(4)
    bucket.give_back(2)
    assert bucket.tokens == pytest.approx(3)


def test_wait_takes_nothing() -> None:
    bucket = TokenBucket(rate=1, capacity=5, clock=ManualClock())
    assert bucket.wait(5) == 0.0
    assert bucket.tokens == 5


@pytest.mark.parametrize(
    ("rate", "capacity"), [(0, 1), (1, 0), (-1, 1), (math.inf, 1), (1, math.nan)]
)
def test_bucket_rejects_a_degenerate_shape(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError, match="positive and finite"):
        TokenBucket(rate, capacity, ManualClock())


def test_negative_amounts_are_a_bug() -> None:
    with pytest.raises(ValueError, match="amount must be >= 0"):
        TokenBucket(1, 1, ManualClock()).take(-1)


# --- admit -------------------------------------------------------------------------------


async def test_rate_10_burst_1s_admits_exactly_10_then_says_when() -> None:
    h = Harness(requests_per_s=10, burst_s=1)
    admitted, error = h.admit_until_refused()
    assert admitted == 10
    assert error.status == 429
    assert error.message == "tenant 'acme' is over its request quota (10/s)"
    assert error.retry_after_s == pytest.approx(0.1)
    await h.clock.advance(error.retry_after_s)
    h.tenants.admit(h.acme, 1)
    with pytest.raises(QuotaExceeded):
        h.tenants.admit(h.acme, 1)


async def test_a_sustained_rate_is_admitted_in_full() -> None:
    h = Harness(requests_per_s=10, burst_s=2)
    admitted, _ = h.admit_until_refused()
    assert admitted == 20
    for _ in range(5):
        await h.clock.advance(1)
        admitted, _ = h.admit_until_refused()
        assert admitted == 10


async def test_row_quota_counts_rows() -> None:
    h = Harness(rows_per_s=100)
    admitted, error = h.admit_until_refused(rows=30)
    assert admitted == 3
    assert error.message == "tenant 'acme' is over its row quota (100/s)"
    assert error.retry_after_s == pytest.approx(0.2)


def test_a_refused_row_charge_refunds_the_request_token() -> None:
    h = Harness(requests_per_s=10, rows_per_s=100)
    h.tenants.admit(h.acme, 60)
    with pytest.raises(QuotaExceeded, match="row quota"):
        h.tenants.admit(h.acme, 60)
    snapshot = h.tenants.snapshot()["acme"]
    assert snapshot["requests_left"] == pytest.approx(9)
    assert snapshot["rows_left"] == pytest.approx(40)


async def test_retry_after_waits_for_both_buckets() -> None:
    h = Harness(requests_per_s=1, rows_per_s=5, burst_s=2)
    h.tenants.admit(h.acme, 10)
    h.tenants.admit(h.acme, 0)
    with pytest.raises(QuotaExceeded, match="request quota") as caught:
        h.tenants.admit(h.acme, 10)
    assert caught.value.retry_after_s == pytest.approx(2.0)  # the rows need 2 s, requests 1 s
    await h.clock.advance(1.0)
    with pytest.raises(QuotaExceeded, match="row quota") as caught:
        h.tenants.admit(h.acme, 10)
    assert caught.value.retry_after_s == pytest.approx(1.0)
    await h.clock.advance(1.0)
    h.tenants.admit(h.acme, 10)


def test_a_batch_over_the_row_burst_is_a_bad_request() -> None:
    h = Harness(requests_per_s=10, rows_per_s=100, burst_s=0.5)
    with pytest.raises(BadRequest) as caught:
        h.tenants.admit(h.acme, 51)
    assert caught.value.status == 400
    assert caught.value.message == (
        "a batch of 51 rows exceeds tenant 'acme''s burst of 50 rows "
        "(rows_per_s x burst_s): split the batch"
    )
    snapshot = h.tenants.snapshot()["acme"]
    assert snapshot["requests_left"] == 5
    assert snapshot["rejected"] == 1
    h.tenants.admit(h.acme, 50)


def test_anonymous_requests_have_no_quota() -> None:
    h = Harness(requests_per_s=1)
    for _ in range(1000):
        h.tenants.admit(None, 10_000)
    assert h.tenants.snapshot()["acme"]["admitted"] == 0


def test_a_tenant_without_limits_is_only_counted() -> None:
    h = Harness()
    for _ in range(1000):
        h.tenants.admit(h.acme, 10_000)
    assert h.tenants.snapshot()["acme"] == {"admitted": 1000, "rejected": 0}


def test_admit_refuses_a_tenant_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="'ghost' is not one of these tenants"):
        Harness().tenants.admit(Tenant("ghost", "default"), 1)


def test_admit_refuses_negative_rows() -> None:
    h = Harness()
    with pytest.raises(ValueError, match="rows must be >= 0"):
        h.tenants.admit(h.acme, -1)


async def test_concurrent_admits_at_one_instant_take_exactly_the_capacity() -> None:
    h = Harness(requests_per_s=25, rows_per_s=1000, burst_s=2)
    start = asyncio.Event()

    async def request() -> bool:
        await start.wait()
        try:
            h.tenants.admit(h.acme, 4)
        except QuotaExceeded:
            return False
        await asyncio.sleep(0)  # hold the admission across a yield, as a real call would
        return True

    tasks = [asyncio.create_task(request()) for _ in range(500)]
    await asyncio.sleep(0)
    start.set()
    results = await asyncio.gather(*tasks)
    assert sum(results) == 50
    snapshot = h.tenants.snapshot()["acme"]
    assert snapshot["admitted"] == 50
    assert snapshot["rejected"] == 450


async def test_snapshot_reports_tokens_and_counts() -> None:
    h = Harness(requests_per_s=10, rows_per_s=200)
    for _ in range(3):
        h.tenants.admit(h.acme, 50)
    with pytest.raises(QuotaExceeded):
        h.tenants.admit(h.acme, 60)
    await h.clock.advance(0.1)
    assert h.tenants.snapshot() == {
        "acme": {
            "requests_left": pytest.approx(8),
            "rows_left": pytest.approx(70),
            "admitted": 3,
            "rejected": 1,
        },
        "beta": {"admitted": 0, "rejected": 0},
    }


# --- the YAML snippet -------------------------------------------------------------------------


def test_key_entry_yaml_pastes_under_tenants_and_stores_only_the_hash() -> None:
    key = new_key()
    snippet = key_entry_yaml("acme-corp", key)
    assert key not in snippet
    assert "shown once" in snippet
    assert "only its sha256" in snippet
    loaded = yaml.safe_load("tenants:\n" + snippet)
    entry = TenantConfig(**loaded["tenants"]["acme-corp"])
    assert entry.key_sha256 == key_digest(key)
    assert entry.requests_per_s == 100
    tenants = Tenants({"acme-corp": entry}, require_keys=True, clock=ManualClock())
    assert tenants.authenticate(f"Bearer {key}") == Tenant("acme-corp", "default")


@pytest.mark.parametrize("name", ["", "has space", "colon:", "#hash", "-dash", "x" * 65])
def test_key_entry_yaml_refuses_names_that_break_yaml(name: str) -> None:
    with pytest.raises(ValueError, match="tenant name"):
        key_entry_yaml(name, new_key())


# --- properties --------------------------------------------------------------------------------

step = st.tuples(
    st.integers(0, 40),  # rows in the request
    st.floats(min_value=0, max_value=2),  # clock advance before it
)


def _most_in_any_window(times: list[float], amounts: list[int], rate: float, cap: float) -> None:
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            admitted = sum(amounts[i : j + 1])
            allowed = rate * (times[j] - start) + cap
            assert admitted <= allowed + rate * 1e-6 + 1e-6, (start, times[j], admitted, allowed)


@settings(max_examples=200, deadline=None)
@given(
    requests_per_s=st.floats(min_value=0.5, max_value=50),
    rows_per_s=st.floats(min_value=20, max_value=500),
    burst_s=st.floats(min_value=2, max_value=5),
    steps=st.lists(step, max_size=80),
)
def test_admitted_in_any_window_never_exceed_rate_times_span_plus_capacity(
    requests_per_s: float, rows_per_s: float, burst_s: float, steps: list[tuple[int, float]]
) -> None:
    h = Harness(requests_per_s=requests_per_s, rows_per_s=rows_per_s, burst_s=burst_s)
    times: list[float] = []
    rows_admitted: list[int] = []

    async def run() -> None:
        for rows, advance in steps:
            await h.clock.advance(advance)
            error = h.refusal(rows)
            if error is None:
                times.append(h.clock.now())
                rows_admitted.append(rows)
            else:
                assert 0 < error.retry_after_s < math.inf

    asyncio.run(run())
    _most_in_any_window(times, [1] * len(times), requests_per_s, requests_per_s * burst_s)
    _most_in_any_window(times, rows_admitted, rows_per_s, rows_per_s * burst_s)
    snapshot = h.tenants.snapshot()["acme"]
    assert snapshot["admitted"] + snapshot["rejected"] == len(steps)


@settings(max_examples=200, deadline=None)
@given(
    requests_per_s=st.floats(min_value=1, max_value=1000),
    rows_per_s=st.floats(min_value=50, max_value=100_000),
    steps=st.lists(step, min_size=1, max_size=40),
)
def test_retry_after_is_exactly_long_enough(
    requests_per_s: float, rows_per_s: float, steps: list[tuple[int, float]]
) -> None:
    h = Harness(requests_per_s=requests_per_s, rows_per_s=rows_per_s)

    async def run() -> None:
        for rows, advance in steps:
            await h.clock.advance(advance)
            error = h.refusal(rows)
            if error is None:
                continue
            early = error.retry_after_s - 1e-6
            if early > 0:
                await h.clock.advance(early)
                assert h.refusal(rows) is not None
                await h.clock.advance(1e-6)
            else:
                await h.clock.advance(error.retry_after_s)
            h.tenants.admit(h.acme, rows)

    asyncio.run(run())
