"""Feedback joined to predictions: outcomes, accuracy by segment and window, bounds."""

from __future__ import annotations

from typing import Any

import pytest

from failsoft.data.feedback import AccuracyBoard, FeedbackResult, parse_feedback
from failsoft.data.prediction_options import FeedbackOptions


def record(request_id: str, prediction: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "model": "m",
        "version": "v1",
        "tenant": extra.pop("tenant", "acme"),
        "time": extra.pop("time", 7200.0),
        "status": 200,
        "prediction": prediction,
        "kind": extra.pop("kind", "classification"),
        **extra,
    }


def send(board: AccuracyBoard, body: Any, tenant: str | None = None) -> FeedbackResult:
    result = FeedbackResult()
    items = parse_feedback(body, result)
    return board.judge("m", tenant, items, result)


def test_outcomes_are_counted_never_fatal() -> None:
    board = AccuracyBoard(FeedbackOptions())
    board.add_records([record("a", [1]), record("b", [2])])
    result = send(
        board,
        {
            "feedback": [
                {"request_id": "a", "label": 1},
                {"request_id": "a", "label": 0},  # a second verdict changes nothing
                {"request_id": "nobody", "label": 1},
                {"request_id": "b"},
                "junk",
            ]
        },
    )
    assert result.counts == {
        "joined": 1,
        "unknown": 1,
        "duplicate": 1,
        "invalid": 2,
    }
    assert result.problems[0].startswith("feedback[3]: give label")
    assert result.problems[1].startswith("feedback[4]: expected an object")
    segments = board.report("m")["models"]["m"]["versions"]["v1"]["segments"]
    assert segments["all"] == {"count": 1, "correct": 1, "accuracy": 1.0}


def test_a_tenant_judges_only_its_own_predictions() -> None:
    board = AccuracyBoard(FeedbackOptions())
    board.add_records([record("a", [1], tenant="acme")])
    assert send(board, {"request_id": "a", "label": 1}, tenant="other").counts["unknown"] == 1
    assert send(board, {"request_id": "a", "label": 1}, tenant="acme").counts["joined"] == 1


def test_a_drop_confined_to_one_segment_shows() -> None:
    board = AccuracyBoard(FeedbackOptions())
    good = [record(f"g{i}", [i % 3], tenant="good", segments=["x:<1"]) for i in range(800)]
    bad = [record(f"b{i}", [i % 3], tenant="bad", segments=["x:>=1"]) for i in range(200)]
    board.add_records(good + bad)
    feedback = [{"request_id": f"g{i}", "label": i % 3} for i in range(800)]
    feedback += [{"request_id": f"b{i}", "label": i % 3 if i % 2 else 9} for i in range(200)]
    assert send(board, {"feedback": feedback}).counts["joined"] == 1000
    segments = board.report()["models"]["m"]["versions"]["v1"]["segments"]
    assert segments["tenant:good"]["accuracy"] == 1.0
    assert segments["tenant:bad"]["accuracy"] == 0.5
    assert segments["x:>=1"]["accuracy"] == 0.5
    assert segments["all"]["accuracy"] == pytest.approx(0.9)


def test_regression_error_and_rows() -> None:
    board = AccuracyBoard(FeedbackOptions())
    board.add_records([record("r", [1.0, 3.0], kind="regression")])
    assert send(board, {"request_id": "r", "values": [2.0, 3.0]}).counts["joined"] == 1
    version = board.report()["models"]["m"]["versions"]["v1"]
    assert version["kind"] == "regression"
    assert version["segments"]["all"]["mae"] == pytest.approx(0.5)
    assert version["segments"]["all"]["rmse"] == pytest.approx((0.5) ** 0.5)
    wrong_rows = send(board, {"request_id": "r", "values": [1.0, 2.0, 3.0]})
    assert wrong_rows.counts["duplicate"] == 1  # already judged: rows are not checked again


def test_the_index_is_bounded_and_windows_are_by_prediction_time() -> None:
    board = AccuracyBoard(FeedbackOptions(index_records=1000, window_s=3600, windows=2))
    board.add_records([record(f"r{i}", [1], time=3600.0 * (i // 500)) for i in range(1500)])
    assert board.report()["indexed"] == 1000
    assert board.missing("m", parse_feedback({"request_id": "r0", "label": 1}, FeedbackResult()))
    ids = [f"r{i}" for i in range(500, 1500)]
    send(board, {"feedback": [{"request_id": rid, "label": 1} for rid in ids]})
    windows = board.report()["models"]["m"]["versions"]["v1"]["windows"]
    assert [(w["start"], w["count"]) for w in windows] == [(3600.0, 500), (7200.0, 500)]


def test_found_on_disk_joins_like_the_index() -> None:
    board = AccuracyBoard(FeedbackOptions())
    result = FeedbackResult()
    items = parse_feedback({"request_id": "old", "label": 2}, result)
    board.judge("m", None, items, result, {"old": record("old", [2])})
    assert result.counts["joined"] == 1


def test_a_bulk_body_that_is_not_a_list_is_refused() -> None:
    with pytest.raises(ValueError, match="feedback must be a list"):
        parse_feedback({"feedback": {"request_id": "a"}}, FeedbackResult())


def test_prepare_maps_the_index_before_a_lookup() -> None:
    board = AccuracyBoard(FeedbackOptions(index_records=1000))
    board.add_records([record(f"r{i}", [i % 3]) for i in range(1500)])
    board.prepare()
    feedback = [{"request_id": f"r{i}", "label": i % 3} for i in range(400, 1500)]
    result = send(board, {"feedback": feedback})
    assert result.counts["joined"] == 1000
    assert result.counts["unknown"] == 100
