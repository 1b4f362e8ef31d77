"""`failsoft trace` and `failsoft accuracy`: what people read, and refusals of bad input."""

from __future__ import annotations

from click.testing import CliRunner

from failsoft.cli import main
from failsoft.cli_trace import describe_accuracy, describe_trace
from failsoft.data.feedback import AccuracyBoard, FeedbackResult, parse_feedback
from failsoft.data.prediction_options import FeedbackOptions


def test_accuracy_table_shows_segments_windows_and_counts() -> None:
    board = AccuracyBoard(FeedbackOptions())
    board.add_records(
        [
            {
                "request_id": f"r{i}",
                "model": "iris",
                "version": "v1",
                "tenant": "bad" if i < 4 else "good",
                "time": 7200.0,
                "status": 200,
                "prediction": [1],
                "kind": "classification",
            }
            for i in range(10)
        ]
    )
    result = FeedbackResult()
    body = {"feedback": [{"request_id": f"r{i}", "label": 1 if i % 2 else 0} for i in range(4)]}
    body["feedback"] += [{"request_id": f"r{i}", "label": 1} for i in range(4, 10)]
    board.judge("iris", None, parse_feedback(body, result), result)
    shown = describe_accuracy(board.report("iris"), "iris")
    assert "v1       all          10    80.00%" in shown
    assert "tenant:bad   4     50.00%" in shown
    assert "tenant:good  6     100.00%" in shown
    assert "1970-01-01 02:00:00" in shown  # the window, by prediction time
    assert shown.endswith("feedback: joined 10")
    assert describe_accuracy({"models": {}}, "other").startswith("no labelled predictions")


def test_trace_table_names_attempts_tier_revision_artifact_and_audit() -> None:
    answer = {
        "prediction": {
            "request_id": "r1",
            "time": 0.0,
            "model": "iris",
            "version": "v2",
            "version_requested": "v1",
            "status": 200,
            "served_by": "iris/v1/fallback:version:v2",
            "fallback_tier": "version:v2",
            "degraded": True,
            "revision": 7,
            "artifact_sha256": "ab" * 32,
            "attempts": [
                {"version": "v1", "replica": "r0", "outcome": "failed", "failure_class": "replica"},
                {"version": "v1", "tier": "version:v2", "outcome": "fallback"},
            ],
            "checks": {"input_contract": "passed"},
        },
        "audit": [
            {
                "seq": 4,
                "time": "2026-11-30T10:00:00Z",
                "actor": "admin",
                "action": "revision.applied",
                "target": "revision:7",
            }
        ],
        "audit_note": None,
    }
    shown = describe_trace(answer)
    for expected in ("version:v2", "ab" * 32, "revision.applied", "failed    replica", "yes"):
        assert expected in shown


def test_a_request_id_with_a_slash_is_refused_before_any_call() -> None:
    result = CliRunner().invoke(main, ["trace", "a/b", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "no '/'" in result.output
