from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from failsoft.drills.experiment import (
    MAX_REQUESTS,
    Experiment,
    ExperimentError,
    ScheduledFault,
    load_experiment,
)

DRILLS = Path(__file__).resolve().parents[2] / "drills"
BUNDLED = sorted(DRILLS.glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "name": "minimal",
    "load": {
        "model": "iris",
        "rate": 10,
        "duration_s": 10,
        "requests": [
            {
                "inputs": [
                    {"name": "features", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}
                ],
                "expect": {"label": [0]},
            }
        ],
    },
}


def _write(folder: Path, data: Any, name: str = "drill.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _drill(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data.update(changes)
    return data


def _problems(path: Path) -> list[str]:
    with pytest.raises(ExperimentError) as caught:
        load_experiment(path)
    assert caught.value.source == str(path)
    return caught.value.problems


def test_the_suite_bundles_drills() -> None:
    assert len(BUNDLED) >= 2


@pytest.mark.parametrize("path", BUNDLED, ids=[path.stem for path in BUNDLED])
def test_bundled_drill_loads(path: Path) -> None:
    experiment = load_experiment(path)

    assert isinstance(experiment, Experiment)
    # something to get through
    bad_data = any(request.degraded for request in experiment.load.requests)
    shift = experiment.data is not None and experiment.data.shift is not None
    steps = (experiment.faults, experiment.attack, experiment.deploys, experiment.flags)
    assert any(steps) or experiment.rollouts or bad_data or shift
    for fault in experiment.faults:
        assert fault.at_s + fault.for_s <= experiment.load.duration_s


def test_minimal_drill_loads_with_defaults(tmp_path: Path) -> None:
    experiment = load_experiment(_write(tmp_path, MINIMAL))

    assert experiment.name == "minimal"
    assert experiment.target is None
    assert experiment.faults == []
    assert experiment.hypothesis.availability_pct == 99.0
    assert experiment.hypothesis.correctness
    assert experiment.load.priorities == {"default": 1.0}
    assert experiment.load.timeout_ms == 1000


def test_unknown_key_is_named_by_its_path(tmp_path: Path) -> None:
    data = _drill()
    data["load"]["ratte"] = 10

    assert _problems(_write(tmp_path, data)) == ["load.ratte: unknown key"]


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    assert _problems(_write(tmp_path, _drill(expectations={}))) == ["expectations: unknown key"]


def test_fault_ending_after_the_load_is_named(tmp_path: Path) -> None:
    data = _drill(faults=[{"at_s": 1, "for_s": 2, "kind": "kill", "model": "iris"}])
    data["faults"].append({"at_s": 8, "for_s": 4, "kind": "kill", "model": "iris"})

    (problem,) = _problems(_write(tmp_path, data))

    assert "faults[1] ends at 12 s, after the load (10 s)" in problem


def test_fault_ending_exactly_with_the_load_is_accepted(tmp_path: Path) -> None:
    data = _drill(faults=[{"at_s": 6, "for_s": 4, "kind": "kill", "model": "iris"}])

    assert len(load_experiment(_write(tmp_path, data)).faults) == 1


def test_target_with_both_config_and_url_is_named(tmp_path: Path) -> None:
    data = _drill(target={"config": "failsoft.yaml", "url": "http://127.0.0.1:8000"})

    (problem,) = _problems(_write(tmp_path, data))

    assert problem.startswith("target: ")
    assert "exactly one of config" in problem


def test_target_with_neither_config_nor_url_is_named(tmp_path: Path) -> None:
    (problem,) = _problems(_write(tmp_path, _drill(target={"admin_token_env": "TOKEN"})))

    assert problem.startswith("target: ")


def test_too_many_requests_are_named(tmp_path: Path) -> None:
    data = _drill()
    data["load"].update(rate=20_000, duration_s=3600)

    (problem,) = _problems(_write(tmp_path, data))

    assert problem == f"load: 20000 req/s for 3600 s is over {MAX_REQUESTS} requests"


def test_requests_at_the_cap_are_accepted(tmp_path: Path) -> None:
    data = _drill()
    data["load"].update(rate=1000, duration_s=MAX_REQUESTS / 1000)

    assert load_experiment(_write(tmp_path, data)).load.rate == 1000


def test_fault_kind_that_does_not_exist_is_named(tmp_path: Path) -> None:
    data = _drill(faults=[{"at_s": 1, "for_s": 2, "kind": "explode", "model": "iris"}])

    (problem,) = _problems(_write(tmp_path, data))

    assert problem.startswith("faults[0].kind: ")
    assert "'explode'" in problem


def test_every_problem_is_named(tmp_path: Path) -> None:
    data = _drill(faults=[{"at_s": -1, "for_s": 0, "kind": "kill", "model": "iris"}])
    data["load"]["rate"] = 0

    problems = _problems(_write(tmp_path, data))

    assert [problem.split(":")[0] for problem in problems] == [
        "load.rate",
        "faults[0].at_s",
        "faults[0].for_s",
    ]


def test_file_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    assert _problems(_write(tmp_path, ["name", "load"])) == [
        "(top level): expected a mapping with name and load"
    ]


def test_invalid_yaml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")

    (problem,) = _problems(path)

    assert problem.startswith("invalid YAML: ")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path / "absent.yaml")

    assert problem.startswith("cannot read: ")


def test_relative_target_config_is_resolved_against_the_drill_folder(tmp_path: Path) -> None:
    folder = tmp_path / "drills"
    folder.mkdir()
    path = _write(folder, _drill(target={"config": "../configs/failsoft.yaml"}))

    target = load_experiment(path).target

    assert target is not None
    assert target.config == (tmp_path / "configs" / "failsoft.yaml").resolve()


def test_absolute_target_config_is_kept(tmp_path: Path) -> None:
    config = (tmp_path / "elsewhere" / "failsoft.yaml").resolve()
    path = _write(tmp_path, _drill(target={"config": str(config)}))

    target = load_experiment(path).target

    assert target is not None
    assert target.config == config


def test_url_target_is_kept(tmp_path: Path) -> None:
    path = _write(tmp_path, _drill(target={"url": "http://127.0.0.1:8000"}))

    target = load_experiment(path).target

    assert target is not None
    assert target.url == "http://127.0.0.1:8000"
    assert target.config is None
    assert target.admin_token_env == "FAILSOFT_ADMIN_TOKEN"


def test_scheduled_fault_spec_drops_the_schedule_and_scales_the_duration() -> None:
    fault = ScheduledFault(
        at_s=3, for_s=4, kind="latency", model="iris", version="v1", latency_ms=20
    )

    spec = fault.spec(0.5)

    assert "at_s" not in spec
    assert "for_s" not in spec
    assert "replica" not in spec  # unset, not sent as null
    assert spec["duration_s"] == 2.0
    assert spec["kind"] == "latency"
    assert spec["model"] == "iris"
    assert spec["version"] == "v1"
    assert spec["latency_ms"] == 20


def test_scheduled_fault_spec_lasts_for_s_unscaled_by_default() -> None:
    fault = ScheduledFault(at_s=0, for_s=8, kind="kill", model="iris", replica="w0")

    assert fault.spec()["duration_s"] == 8.0


def test_max_failed_after_heal_needs_a_fault(tmp_path: Path) -> None:
    (problem,) = _problems(_write(tmp_path, _drill(expect={"max_failed_after_heal": 5})))

    assert problem == "(top level): expect.max_failed_after_heal needs a fault to heal from"


def test_max_failed_after_heal_with_a_fault_loads(tmp_path: Path) -> None:
    data = _drill(
        faults=[{"at_s": 2, "for_s": 2, "kind": "error", "model": "iris"}],
        expect={"max_failed_after_heal": 5},
    )

    assert load_experiment(_write(tmp_path, data)).expect.max_failed_after_heal == 5


# --- a hostile client's attack ------------------------------------------------------

FEATURES = [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
POISON = [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [3.0e38] * 4}]


def _attack(*requests: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"rate": 30, "requests": list(requests), **changes}


def test_bundled_hostile_client_drill_has_every_kind_of_attack() -> None:
    experiment = load_experiment(DRILLS / "hostile-client.yaml")

    assert experiment.attack is not None
    kinds = [request.kind for request in experiment.attack.requests]
    assert kinds == ["poison", "poison", "poison", "deadline", "outputs", "oversize"]
    assert experiment.attack.requests[0].inputs == [
        {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [3.0e38] * 4}
    ]
    assert experiment.attack.requests[-1].body_bytes == 9 * 1024 * 1024
    assert experiment.attack_window_s() == (4.5, 19.5)


def test_attack_of_every_kind_loads(tmp_path: Path) -> None:
    data = _drill(
        attack=_attack(
            {"kind": "poison", "inputs": POISON},
            {"kind": "deadline", "timeout_ms": 1, "inputs": FEATURES},
            {"kind": "outputs", "outputs": ["label"], "inputs": FEATURES},
            {"kind": "oversize", "body_bytes": 9437184},
            {"kind": "poison", "inputs": POISON, "headers": {"Authorization": "Bearer x"}},
            at_s=2,
            for_s=6,
        ),
        expect={"max_poison_uncontained": 0, "max_not_ready": 0, "max_replicas_penalised": 0},
    )

    experiment = load_experiment(_write(tmp_path, data))

    assert experiment.attack is not None
    assert experiment.attack.rate == 30
    assert experiment.attack_window_s() == (2.0, 8.0)
    assert experiment.attack_window_s(0.5) == (1.0, 4.0)
    assert experiment.expect.max_poison_uncontained == 0
    assert experiment.expect.max_not_ready == 0


def test_attack_without_for_s_lasts_to_the_end_of_the_load(tmp_path: Path) -> None:
    data = _drill(attack=_attack({"kind": "poison", "inputs": POISON}, at_s=4))

    assert load_experiment(_write(tmp_path, data)).attack_window_s() == (4.0, 10.0)


def test_no_attack_is_the_default(tmp_path: Path) -> None:
    experiment = load_experiment(_write(tmp_path, MINIMAL))

    assert experiment.attack is None
    with pytest.raises(ValueError, match="no attack"):
        experiment.attack_window_s()


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        ({"kind": "poison"}, "a poison request needs inputs"),
        (
            {"kind": "deadline", "inputs": FEATURES},
            "a deadline request needs timeout_ms (sent as Failsoft-Timeout-Ms)",
        ),
        (
            {"kind": "outputs", "inputs": FEATURES},
            "an outputs request needs outputs (the names asked for)",
        ),
        (
            {"kind": "oversize"},
            "an oversize request needs body_bytes (its body is generated)",
        ),
        (
            {"kind": "oversize", "body_bytes": 4096, "inputs": FEATURES},
            "an oversize request has no inputs: its body is generated",
        ),
        (
            {"kind": "poison", "inputs": POISON, "body_bytes": 4096},
            "body_bytes applies to oversize requests only",
        ),
        (
            {"kind": "poison", "inputs": POISON, "timeout_ms": 1},
            "timeout_ms applies to deadline requests only",
        ),
        (
            {"kind": "poison", "inputs": POISON, "outputs": ["label"]},
            "outputs applies to outputs requests only",
        ),
        (
            {"kind": "poison", "inputs": POISON, "headers": {"Failsoft-Timeout-Ms": "1"}},
            "header 'Failsoft-Timeout-Ms' is set by the drill (use kind: deadline)",
        ),
        (
            {"kind": "poison", "inputs": POISON, "headers": {"Content-Length": "1"}},
            "header 'Content-Length' is set by the drill (use kind: deadline)",
        ),
        (
            {"kind": "poison", "inputs": POISON, "headers": {"X-Evil": "a\r\nb"}},
            "header 'X-Evil': not a valid header",
        ),
    ],
    ids=[
        "poison-without-inputs",
        "deadline-without-timeout",
        "outputs-without-names",
        "oversize-without-size",
        "oversize-with-inputs",
        "body-bytes-not-oversize",
        "timeout-not-deadline",
        "outputs-not-outputs",
        "timeout-header",
        "framing-header",
        "header-injection",
    ],
)
def test_attack_request_that_does_not_fit_its_kind_is_named(
    tmp_path: Path, request_: dict[str, Any], problem: str
) -> None:
    problems = _problems(_write(tmp_path, _drill(attack=_attack(request_))))

    assert problems == [f"attack.requests[0]: {problem}"]


def test_attack_kind_that_does_not_exist_is_named(tmp_path: Path) -> None:
    (problem,) = _problems(_write(tmp_path, _drill(attack=_attack({"kind": "ddos"}))))

    assert problem.startswith("attack.requests[0].kind: ")
    assert "'ddos'" in problem


def test_oversize_body_is_bounded(tmp_path: Path) -> None:
    data = _drill(attack=_attack({"kind": "oversize", "body_bytes": 64 * 1024 * 1024}))

    (problem,) = _problems(_write(tmp_path, data))

    assert problem.startswith("attack.requests[0].body_bytes: ")


def test_attack_ending_after_the_load_is_named(tmp_path: Path) -> None:
    data = _drill(attack=_attack({"kind": "poison", "inputs": POISON}, at_s=6, for_s=5))

    assert _problems(_write(tmp_path, data)) == [
        "(top level): attack ends at 11 s, after the load (10 s)"
    ]


def test_attack_starting_after_the_load_is_named(tmp_path: Path) -> None:
    data = _drill(attack=_attack({"kind": "poison", "inputs": POISON}, at_s=10))

    assert _problems(_write(tmp_path, data)) == [
        "(top level): attack starts at 10 s, when the load (10 s) is over"
    ]


def test_attack_without_requests_is_named(tmp_path: Path) -> None:
    (problem,) = _problems(_write(tmp_path, _drill(attack={"rate": 30, "requests": []})))

    assert problem.startswith("attack.requests: ")


def test_poison_bound_needs_an_attack_with_poison(tmp_path: Path) -> None:
    without = _drill(expect={"max_poison_uncontained": 0})
    no_poison = _drill(
        attack=_attack({"kind": "oversize", "body_bytes": 4096}),
        expect={"max_poison_uncontained": 0},
    )

    assert _problems(_write(tmp_path, without, "a.yaml")) == [
        "(top level): expect.max_poison_uncontained needs an attack with poison"
    ]
    assert _problems(_write(tmp_path, no_poison, "b.yaml")) == [
        "(top level): expect.max_poison_uncontained needs a poison request in the attack"
    ]


def test_a_number_yaml_reads_as_text_is_named(tmp_path: Path) -> None:
    path = tmp_path / "drill.yaml"
    text = yaml.safe_dump(_drill(attack=_attack({"kind": "poison", "inputs": POISON})))
    path.write_text(text.replace("3.0e+38", "3e38"), encoding="utf-8")

    (problem,) = _problems(path)

    assert problem == (
        "attack.requests[0]: inputs[0].data: '3e38' is text (YAML reads 3e38 as a string); "
        "write it as 3.0e+38"
    )


def test_text_in_a_bytes_input_is_kept(tmp_path: Path) -> None:
    data = _drill()
    data["load"]["requests"][0]["inputs"] = [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["3e38"]}
    ]

    assert load_experiment(_write(tmp_path, data)).load.requests[0].inputs[0]["data"] == ["3e38"]


# --- deploy steps -----------------------------------------------------------------------

WRONG_HASH = {"models": {"iris": {"versions": {"v2": {"sha256": "0" * 64}}}}}


def test_a_deploy_step_loads(tmp_path: Path) -> None:
    data = _drill(deploys=[{"at_s": 4, "change": WRONG_HASH, "expect": "refused", "reason": "sha"}])

    (deploy,) = load_experiment(_write(tmp_path, data)).deploys

    assert deploy.at_s == 4
    assert deploy.change == WRONG_HASH
    assert deploy.expect == "refused"
    assert deploy.reason == "sha"


def test_a_deploy_needs_its_expectation(tmp_path: Path) -> None:
    data = _drill(deploys=[{"at_s": 4, "change": WRONG_HASH}])

    assert _problems(_write(tmp_path, data)) == ["deploys[0].expect: Field required"]


def test_a_deploy_expectation_is_refused_or_applied(tmp_path: Path) -> None:
    data = _drill(deploys=[{"at_s": 4, "change": WRONG_HASH, "expect": "rejected"}])

    (problem,) = _problems(_write(tmp_path, data))

    assert problem.startswith("deploys[0].expect: Input should be 'refused' or 'applied'")


def test_an_empty_change_is_named(tmp_path: Path) -> None:
    data = _drill(deploys=[{"at_s": 4, "change": {}, "expect": "refused"}])

    assert _problems(_write(tmp_path, data)) == [
        "deploys[0]: change is empty: give the configuration keys to change"
    ]


def test_a_change_to_a_key_no_configuration_has_is_named(tmp_path: Path) -> None:
    data = _drill(deploys=[{"at_s": 4, "change": {"modles": {}}, "expect": "refused"}])

    (problem,) = _problems(_write(tmp_path, data))

    assert problem.startswith("deploys[0]: change: 'modles' not a configuration key (one of ")
    assert "models" in problem


def test_a_change_that_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    data = _drill(deploys=[{"at_s": 4, "change": ["models"], "expect": "refused"}])

    (problem,) = _problems(_write(tmp_path, data))

    assert problem.startswith("deploys[0].change: Input should be a valid dictionary")


def test_a_reason_for_a_change_expected_applied_is_named(tmp_path: Path) -> None:
    data = _drill(deploys=[{"at_s": 4, "change": WRONG_HASH, "expect": "applied", "reason": "x"}])

    assert _problems(_write(tmp_path, data)) == [
        "deploys[0]: reason applies to a deploy expected to be refused"
    ]


def test_a_deploy_after_the_load_is_named(tmp_path: Path) -> None:
    data = _drill(deploys=[{"at_s": 10, "change": WRONG_HASH, "expect": "refused"}])

    (problem,) = _problems(_write(tmp_path, data))

    assert "deploys[0] is at 10 s, when the load (10 s) is over" in problem


def test_the_bad_deploy_drill_expects_two_refusals() -> None:
    experiment = load_experiment(DRILLS / "bad-deploy.yaml")

    assert [deploy.expect for deploy in experiment.deploys] == ["refused", "refused"]
    assert experiment.expect.max_lost == 0
    assert experiment.expect.max_degraded_pct == 0


def test_the_short_form_judges_p99_with_the_noise_margin() -> None:
    tight = Experiment.model_validate(_drill(hypothesis={"availability_pct": 99.5, "p99_ms": 100}))
    loose = Experiment.model_validate(_drill(hypothesis={"p99_ms": 5}))

    assert tight.with_noise_margin().hypothesis.p99_ms == 200  # 2x
    assert loose.with_noise_margin().hypothesis.p99_ms == 25  # +20 ms
    assert tight.with_noise_margin().hypothesis.availability_pct == 99.5
    assert tight.hypothesis.p99_ms == 100  # the drill as written is untouched


def test_without_a_p99_hypothesis_the_short_form_judges_as_written() -> None:
    drill = Experiment.model_validate(_drill())

    assert drill.with_noise_margin() == drill
