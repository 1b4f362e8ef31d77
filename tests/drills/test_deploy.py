"""A drill's deploy step: the merge patch it applies and how a gateway's answer is read."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import numpy as np
import pytest
import yaml

from failsoft.config import parse_config
from failsoft.data.contracts import ModelContract
from failsoft.demo import demo_config_text
from failsoft.drills.broken import iris_always_virginica
from failsoft.drills.deploy import DeployOutcome, classify, merge_patch
from failsoft.drills.experiment import Deploy
from failsoft.drills.runner import _deploy

SERVED: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 0},
    "models": {
        "iris": {
            "versions": {
                "v1": {"backend": "onnx", "path": "/m/iris-v1.onnx"},
                "v2": {"backend": "onnx", "path": "/m/iris-v2.onnx"},
            },
            "default_version": "v1",
            "fallback": [{"version": "v2"}, {"stale_cache": True}],
        }
    },
}


def test_a_mapping_merges_into_the_one_it_meets() -> None:
    merged = merge_patch(SERVED, {"models": {"iris": {"versions": {"v2": {"sha256": "ab"}}}}})

    assert merged["models"]["iris"]["versions"]["v2"] == {
        "backend": "onnx",
        "path": "/m/iris-v2.onnx",
        "sha256": "ab",
    }
    assert merged["models"]["iris"]["versions"]["v1"] == SERVED["models"]["iris"]["versions"]["v1"]
    assert merged["server"] == SERVED["server"]


def test_new_keys_are_added_and_scalars_replaced() -> None:
    merged = merge_patch(
        SERVED,
        {"models": {"iris": {"versions": {"v3": {"backend": "python"}}, "default_version": "v3"}}},
    )

    assert merged["models"]["iris"]["versions"]["v3"] == {"backend": "python"}
    assert merged["models"]["iris"]["default_version"] == "v3"


def test_null_removes_a_key() -> None:
    merged = merge_patch(SERVED, {"models": {"iris": {"versions": {"v1": None}}}})

    assert set(merged["models"]["iris"]["versions"]) == {"v2"}


def test_a_list_replaces_the_list_it_meets() -> None:
    merged = merge_patch(SERVED, {"models": {"iris": {"fallback": [{"version": "v1"}]}}})

    assert merged["models"]["iris"]["fallback"] == [{"version": "v1"}]


def test_a_mapping_replaces_a_scalar() -> None:
    assert merge_patch({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}


def test_neither_the_target_nor_the_patch_is_changed() -> None:
    served, patch = copy.deepcopy(SERVED), {"models": {"iris": {"versions": {"v1": None}}}}
    kept = copy.deepcopy(patch)

    merged = merge_patch(served, patch)
    merged["models"]["iris"]["versions"]["v2"]["path"] = "changed"

    assert served == SERVED
    assert patch == kept


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"status": "applied", "revision": 4}, ("applied", "", 4)),
        (200, {"status": "unchanged", "revision": 3}, ("unchanged", "", 3)),
        (
            409,
            {"error": "revision 5 was not applied: iris/v3 failed its probe (r0: ...)"},
            ("refused", "revision 5 was not applied: iris/v3 failed its probe (r0: ...)", 5),
        ),
        (400, {"error": "models.iris.default_version: no version v9"}, None),
        (503, {"error": "the control store is unreachable"}, None),
        (0, {"error": "POST /admin/config: timed out"}, None),
    ],
)
def test_answers_are_classified(
    status: int, body: dict[str, Any], expected: tuple[str, str, int | None] | None
) -> None:
    result = classify(status, body)

    if expected is not None:
        assert result == expected
    elif status == 400:
        assert result == ("refused", body["error"], None)
    else:
        assert result == ("error", body["error"], None)


def test_an_answer_without_a_message_says_its_status() -> None:
    assert classify(500, b"not json") == ("error", "HTTP 500", None)
    assert classify(0, {}) == ("error", "no answer", None)


def _outcome(**changes: Any) -> DeployOutcome:
    fields: dict[str, Any] = {
        "number": 1,
        "expect": "refused",
        "start_s": 6.0,
        "end_s": 6.02,
        "status": 409,
        "result": "refused",
        "reason": "revision 2 was not applied: v2.onnx: sha256 is 02fe, but ... pins 00",
        "revision_before": 1,
        "revision_after": 1,
        "revision": 2,
    }
    fields.update(changes)
    return DeployOutcome(**fields)


def test_a_refusal_that_kept_the_revision_is_as_expected() -> None:
    outcome = _outcome(wanted_reason="sha256")

    assert outcome.as_expected
    assert outcome.measured() == "refused (409), revision kept"
    assert outcome.expected() == "refused, revision kept, reason has 'sha256'"


def test_a_refusal_for_another_reason_is_not_as_expected() -> None:
    assert not _outcome(wanted_reason="failed its probe").as_expected


def test_a_refusal_after_which_another_revision_serves_is_not_as_expected() -> None:
    outcome = _outcome(revision_after=2)

    assert not outcome.as_expected
    assert outcome.measured() == "refused (409), revision 1 -> 2"


def test_an_applied_change_expected_refused_is_not_as_expected() -> None:
    outcome = _outcome(status=200, result="applied", reason="", revision_after=2)

    assert not outcome.as_expected
    assert outcome.measured() == "applied as revision 2 (200)"


def test_an_applied_change_that_serves_is_as_expected() -> None:
    outcome = _outcome(expect="applied", status=200, result="applied", reason="", revision_after=2)

    assert outcome.as_expected
    assert outcome.expected() == "applied, and served"


def test_an_unchanged_or_failed_proposal_is_never_as_expected() -> None:
    for expect in ("refused", "applied"):
        assert not _outcome(expect=expect, status=200, result="unchanged").as_expected
        assert not _outcome(expect=expect, status=503, result="error").as_expected
    assert _outcome(status=0, result="error").measured() == "error"


class FakeAdmin:
    """The two admin calls a deploy step makes, answered from memory."""

    def __init__(self, status: int, answer: Any, revision_after: int) -> None:
        self.revisions = [1, revision_after]
        self.status, self.answer = status, answer
        self.proposed: list[tuple[dict[str, Any], str]] = []

    async def served_config(self) -> tuple[int, dict[str, Any]]:
        return self.revisions.pop(0), copy.deepcopy(SERVED)

    async def propose(self, config: dict[str, Any], reason: str) -> tuple[int, Any]:
        self.proposed.append((config, reason))
        return self.status, self.answer


def _run_step(admin: FakeAdmin, deploy: Deploy) -> DeployOutcome:
    lines: list[str] = []
    outcome = asyncio.run(_deploy(admin, deploy, 2, 1.0, time.time(), lines.append))  # type: ignore[arg-type]
    assert len(lines) == 1
    return outcome


def test_a_step_proposes_the_patched_configuration_and_reads_the_revision_after() -> None:
    refusal = "revision 2 was not applied: /m/iris-v2.onnx: sha256 is 02fe, but ..."
    admin = FakeAdmin(409, {"error": refusal}, revision_after=1)
    deploy = Deploy(
        at_s=0,
        change={"models": {"iris": {"versions": {"v2": {"sha256": "0" * 64}}}}},
        expect="refused",
        reason="sha256",
    )

    outcome = _run_step(admin, deploy)

    ((proposed, reason),) = admin.proposed
    assert proposed["models"]["iris"]["versions"]["v2"]["sha256"] == "0" * 64
    assert (
        proposed["models"]["iris"]["versions"]["v1"] == SERVED["models"]["iris"]["versions"]["v1"]
    )
    assert reason == "drill deploy 2"
    assert (outcome.number, outcome.result, outcome.status, outcome.revision) == (
        2,
        "refused",
        409,
        2,
    )
    assert (outcome.revision_before, outcome.revision_after) == (1, 1)
    assert outcome.reason == refusal
    assert outcome.end_s >= outcome.start_s
    assert outcome.as_expected


def test_a_step_that_was_applied_names_its_revision() -> None:
    admin = FakeAdmin(200, {"status": "applied", "revision": 2}, revision_after=2)
    deploy = Deploy(
        at_s=0, change={"models": {"iris": {"default_version": "v2"}}}, expect="applied"
    )

    outcome = _run_step(admin, deploy)

    assert (outcome.result, outcome.revision, outcome.revision_after) == ("applied", 2, 2)
    assert outcome.as_expected


def test_the_broken_iris_model_keeps_the_demo_contract_and_gets_every_flower_wrong() -> None:
    iris = parse_config(yaml.safe_load(demo_config_text()), "demo").models["iris"]
    contract = ModelContract(iris.inputs, iris.outputs, iris.max_batch_size)
    features = np.asarray([[5.1, 3.5, 1.4, 0.2], [5.7, 2.8, 4.1, 1.3]], dtype=np.float32)

    outputs = contract.check_outputs(iris_always_virginica({"features": features}), rows=2)

    assert outputs["label"].tolist() == [2, 2]
    assert outputs["probabilities"].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
