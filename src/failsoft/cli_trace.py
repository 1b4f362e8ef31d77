"""`failsoft trace REQUEST_ID` and `failsoft accuracy MODEL`: lineage and ground truth.

Both ask the gateway's admin API (``/admin/predictions/ID``,
``/admin/accuracy``) with the admin token, like the other control commands:
a table for people, ``--json`` for scripts, one line on stderr when it fails.
"""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import quote

import click

from failsoft.cli_control import Gateway, _echo_json, _gateway_options, _json_option, table

__all__ = ["register"]


def _time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def describe_trace(answer: dict[str, Any]) -> str:
    """The lineage of one answer, for people."""
    record = answer["prediction"]
    rows = [
        ("request id", record["request_id"]),
        ("time", _time(record.get("time"))),
        ("tenant", record.get("tenant")),
        ("model", record["model"]),
        ("version", record.get("version")),
        ("version asked", record.get("version_requested")),
        ("status", record.get("status")),
        ("served by", record.get("served_by")),
        ("replica", record.get("replica")),
        ("fallback tier", record.get("fallback_tier")),
        ("degraded", record.get("degraded")),
        ("revision", record.get("revision")),
        ("artifact sha256", record.get("artifact_sha256")),
        ("artifact of model", record.get("artifact_model")),
        ("input digest", record.get("input_digest")),
        ("rows", record.get("rows")),
        ("prediction", record.get("prediction")),
        ("failure class", record.get("failure_class")),
        ("error", record.get("error")),
    ]
    checks = record.get("checks") or {}
    rows.extend((name.replace("_", " "), value) for name, value in checks.items())
    lines = [table(("FIELD", "VALUE"), [(k, _shown(v)) for k, v in rows if v is not None])]
    attempts = record.get("attempts") or []
    lines.append("")
    lines.append(f"attempts ({len(attempts)}):")
    if attempts:
        lines.append(
            table(
                ("#", "VERSION", "REPLICA/TIER", "OUTCOME", "CLASS", "DETAIL"),
                [
                    (
                        index,
                        _shown(step.get("version")),
                        _shown(step.get("replica") or step.get("tier")),
                        step.get("outcome", ""),
                        _shown(step.get("failure_class")),
                        (step.get("message") or "")[:70],
                    )
                    for index, step in enumerate(attempts, 1)
                ],
            )
        )
    audit = answer.get("audit") or []
    lines.append("")
    lines.append(f"audit entries of the revision and the artifact ({len(audit)}):")
    if audit:
        lines.append(
            table(
                ("SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "DIGEST"),
                [
                    (
                        entry["seq"],
                        entry["time"][:19].replace("T", " "),
                        entry["actor"],
                        entry["action"],
                        entry["target"],
                        (entry.get("after") or "")[:16],
                    )
                    for entry in audit
                ],
            )
        )
    if answer.get("audit_note"):
        lines.append(f"({answer['audit_note']})")
    return "\n".join(lines)


@click.command("trace")
@click.argument("request_id")
@_json_option
@_gateway_options
def trace_command(request_id: str, as_json: bool, gateway: Gateway) -> None:
    """The whole lineage of one answer: version, replica, attempts, fallback tier,
    revision and artifact, with the audit entries that put them there.

    REQUEST_ID is the X-Request-Id the answer carried. The gateway must log
    predictions (predictions.enabled) and the request must have been sampled.

    \b
    Example:
      failsoft trace 5f2c0a9e41d7b3c80000000000000042
      failsoft trace 5f2c0a9e41d7b3c80000000000000042 --json
    """
    if not 0 < len(request_id) <= 128 or "/" in request_id:
        raise click.BadParameter("a request id has 1 to 128 characters and no '/'")
    answer = gateway.json("GET", f"/admin/predictions/{quote(request_id, safe='')}")
    if as_json:
        _echo_json(answer)
        return
    click.echo(describe_trace(answer))


def describe_accuracy(answer: dict[str, Any], model: str) -> str:
    found = answer["models"].get(model)
    if not found or not found["versions"]:
        counts = (found or {}).get("feedback") or {}
        note = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
        return f"no labelled predictions of {model} yet (feedback: {note})"
    rows = []
    for version, data in found["versions"].items():
        for segment, stat in data["segments"].items():
            if data["kind"] == "regression":
                figure = f"mae {stat['mae']:.4g}  rmse {stat['rmse']:.4g}"
            else:
                figure = f"{stat['accuracy'] * 100:.2f}%" if stat["accuracy"] is not None else "-"
            rows.append((version, segment, stat["count"], figure))
    lines = [table(("VERSION", "SEGMENT", "ROWS", "ACCURACY/ERROR"), rows)]
    for version, data in found["versions"].items():
        windows = data.get("windows") or []
        if windows:
            lines.append("")
            lines.append(f"{version} by window ({windows[0]['seconds']:g} s, by prediction time):")
            lines.append(
                table(
                    ("START", "ROWS", "ACCURACY/ERROR"),
                    [
                        (
                            _time(window["start"])[:19],
                            window["count"],
                            f"{window['accuracy'] * 100:.2f}%"
                            if window.get("accuracy") is not None
                            else f"mae {window.get('mae', 0):.4g}",
                        )
                        for window in windows
                    ],
                )
            )
    counts = found.get("feedback") or {}
    lines.append("")
    lines.append("feedback: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


@click.command("accuracy")
@click.argument("model")
@_json_option
@_gateway_options
def accuracy_command(model: str, as_json: bool, gateway: Gateway) -> None:
    """Online accuracy (classification) or error (regression) of MODEL from feedback:
    per version, per segment (tenant, feature buckets), per window.

    Feedback is sent to POST /v2/models/MODEL/feedback with the request ids of
    earlier answers and their true labels.

    \b
    Example:
      failsoft accuracy iris
      failsoft accuracy iris --json
    """
    answer = gateway.json("GET", f"/admin/accuracy?model={quote(model, safe='')}")
    if as_json:
        _echo_json(answer)
        return
    click.echo(describe_accuracy(answer, model))


def register(main: click.Group) -> None:
    main.add_command(trace_command)
    main.add_command(accuracy_command)
