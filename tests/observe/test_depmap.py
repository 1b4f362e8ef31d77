"""The dependency map builder on snapshots made here: every state of every kind of node."""

from __future__ import annotations

from typing import Any

from failsoft.control.flags import Switches
from failsoft.observe.depmap import Node, build_map, map_snapshot


def replica(name: str, **changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": name,
        "available": True,
        "healthy": True,
        "breaker": {"state": "closed"},
        "ejection": {"ejected": False},
    }
    found.update(changes)
    return found


def status(v1: list[dict[str, Any]], v2: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "models": {
            "iris": {
                "default_version": "v2",
                "versions": {
                    "v1": {"backend": "process", "replicas": v1},
                    "v2": {"backend": "http", "replicas": v2},
                },
            }
        }
    }


FALLBACK = {"iris": [{"kind": "version", "target": "v1"}, {"kind": "static"}]}


def tree(
    v1: list[dict[str, Any]], v2: list[dict[str, Any]], switches: Switches | None = None
) -> Node:
    snapshot = map_snapshot(status(v1, v2), FALLBACK, {"iris": switches} if switches else {})
    (model,) = build_map(snapshot)
    return model


def states(node: Node) -> dict[str, str]:
    """Path of every node → its state."""
    found = {node.name: node.state}
    for child in node.children:
        found.update({f"{node.name}/{k}": v for k, v in states(child).items()})
    return found


def healthy() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (
        [replica("v1-0", pid=101), replica("v1-1", pid=102)],
        [replica("v2-0", base_url="http://127.0.0.1:9001")],
    )


def test_everything_up_is_operational_and_the_tree_has_every_level() -> None:
    model = tree(*healthy())
    assert states(model) == {
        "iris": "operational",
        "iris/v1": "operational",
        "iris/v1/v1-0": "up",
        "iris/v1/v1-1": "up",
        "iris/v2": "operational",
        "iris/v2/v2-0": "up",
        "iris/fallback": "operational",
        "iris/fallback/version:v1": "operational",
        "iris/fallback/static": "operational",
    }
    v1, v2 = model.children[0], model.children[1]
    assert v1.children[0].detail == "worker pid 101"
    assert v2.children[0].detail == "upstream http://127.0.0.1:9001"
    assert model.detail == "default v2"


def test_each_replica_trouble_has_its_own_word_and_the_version_degrades() -> None:
    troubles = {
        "restarting": {"available": False, "restarts": 2},
        "probe failing": {"healthy": False},
        "breaker open": {"breaker": {"state": "open"}},
        "ejected": {"ejection": {"ejected": True}},
    }
    for word, change in troubles.items():
        model = tree([replica("v1-0", **change), replica("v1-1")], healthy()[1])
        assert states(model)["iris/v1/v1-0"] == word
        assert states(model)["iris/v1"] == "degraded"
        assert states(model)["iris/fallback/version:v1"] == "degraded"
        assert model.state == "degraded"  # a version of it is not all up
    restarting = tree([replica("v1-0", available=False, pid=7, restarts=1)], healthy()[1])
    assert restarting.children[0].children[0].detail == "was worker pid 7, 1 restart"


def test_the_default_version_down_leaves_the_fallback_chain_answering_degraded() -> None:
    model = tree(healthy()[0], [replica("v2-0", breaker={"state": "half_open"})])
    found = states(model)
    assert found["iris/v2"] == "down"
    assert found["iris/v2/v2-0"] == "breaker open"
    assert "breaker half_open" in model.children[1].children[0].detail
    assert found["iris"] == "degraded"


def test_nothing_that_can_answer_is_down() -> None:
    snapshot = map_snapshot(status([], [replica("v2-0", available=False)]), {}, {})
    (model,) = build_map(snapshot)
    assert states(model) == {
        "iris": "down",
        "iris/v1": "down",
        "iris/v2": "down",
        "iris/v2/v2-0": "restarting",
    }


def test_switches_halt_or_switch_off_versions_and_the_model() -> None:
    off = tree(*healthy(), Switches(disabled_versions=frozenset({"v2"})))
    assert states(off)["iris/v2"] == "switched-off"
    assert off.state == "degraded"  # the fallback chain answers for v2
    halted = tree(*healthy(), Switches(halted_versions=frozenset({"v1"})))
    assert states(halted)["iris/v1"] == "halted"
    assert states(halted)["iris/fallback/version:v1"] == "halted"
    assert states(halted)["iris/fallback"] == "degraded"
    whole = tree(*healthy(), Switches(halted=True))
    assert {whole.state, *(v.state for v in whole.children[:2])} == {"halted"}


def test_a_model_tier_follows_the_other_models_version() -> None:
    snapshot = status(*healthy())
    snapshot["models"]["backup"] = {
        "default_version": "b1",
        "versions": {"b1": {"backend": "python", "replicas": [replica("b1-0", inline=True)]}},
    }
    fallbacks = {"iris": [{"kind": "model", "target": "backup"}]}
    switches = {"backup": Switches(disabled_versions=frozenset({"b1"}))}
    iris, backup = build_map(map_snapshot(snapshot, fallbacks, switches))
    assert states(iris)["iris/fallback/model:backup"] == "switched-off"
    assert states(iris)["iris/fallback"] == "down"
    assert backup.children[0].children[0].detail == "in-process"


def test_json_form_keeps_kind_name_state_and_children() -> None:
    (model,) = build_map(map_snapshot(status(*healthy()), FALLBACK, {}))
    answer = model.to_json()
    assert (answer["kind"], answer["state"]) == ("model", "operational")
    assert [child["kind"] for child in answer["children"]] == ["version", "version", "fallback"]
    assert "children" not in answer["children"][1]["children"][0]  # a leaf has none
