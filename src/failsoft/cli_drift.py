"""``failsoft profile build|show`` and ``failsoft drift status``: reference profiles and drift.

failsoft profile build iris iris.csv --config failsoft.yaml --out iris.profile.json
failsoft profile show iris.profile.json
failsoft drift status iris                 # a table of the worst features per window
failsoft drift status iris --png drift.png # reference vs now, the worst features
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click

from failsoft.cli_control import Failed, Gateway, _echo_json, _gateway_options, _json_option, table

__all__ = ["profile_for_push", "push_profile", "register"]

PNG_FEATURES = 4


@click.group("profile")
def profile_group() -> None:
    """Reference profiles: sketches of a model's inputs and outputs on known-good data.

    \b
    Example:
      failsoft profile build iris iris.csv --config failsoft.yaml --out iris.profile.json
      failsoft profile show iris.profile.json
    and in the configuration:  models: {iris: {drift: {profile: iris.profile.json}}}
    """


@profile_group.command("build")
@click.argument("model")
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("failsoft.yaml"),
    show_default=True,
    help="The configuration that declares MODEL (its inputs, outputs and files).",
)
@click.option("--version", "version", default=None, help="The version run [default: the default].")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the profile (JSON).",
)
@click.option(
    "--drop", multiple=True, metavar="COLUMN", help="A data column that is not an input (repeat)."
)
@_json_option
def profile_build(
    model: str,
    data: Path,
    config_path: Path,
    version: str | None,
    out: Path,
    drop: tuple[str, ...],
    as_json: bool,
) -> None:
    """Build MODEL's reference profile from DATA (.csv, .parquet or .npy).

    Every input column gets a sketch (quantiles for numbers, frequent items for
    labels, the null/NaN rate), and so does every output of the model, run on
    the same rows. A CSV or Parquet file names its columns: the columns of a
    one-input model in order, or `features[0]`, ... per input.

    \b
    Example:
      failsoft profile build iris iris.csv --drop species --out iris.profile.json
    """
    from failsoft.backends import _local_loader
    from failsoft.config import ConfigError, HttpBackend, ProcessBackend, RayBackend, load_config
    from failsoft.data.profiles import ProfileError, build_profile, read_data
    from failsoft.errors import FailsoftError

    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise Failed(str(error), 2) from None
    model_config = config.models.get(model)
    if model_config is None:
        raise Failed(f"{config_path}: no model {model!r} (models: {', '.join(config.models)})", 2)
    chosen = version or model_config.default
    backend = model_config.versions.get(chosen)
    if backend is None:
        raise Failed(f"model {model!r} has no version {chosen!r}", 2)
    local = backend.worker if isinstance(backend, ProcessBackend) else backend
    if isinstance(local, HttpBackend | RayBackend):
        raise Failed(f"{model}/{chosen} is a remote model: profile a local version", 2)
    try:
        tensors, labels = read_data(data, model_config.inputs, drop)
        predict = _local_loader(local, model_config)()
        path = getattr(local, "path", None)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
        profile = build_profile(
            model,
            chosen,
            model_config.inputs,
            model_config.outputs,
            tensors,
            predict,
            labels=labels,
            model_sha256=digest,
            source=data.name,
        )
        profile.save(out)
    except ProfileError as error:
        raise Failed(str(error), 2) from None
    except FailsoftError as error:
        raise Failed(f"{model}/{chosen}: {error.message}", 2) from None
    except OSError as error:
        raise Failed(f"{out}: cannot write: {error.strerror or error}") from None
    if as_json:
        _echo_json(profile.summary())
        return
    click.echo(
        f"profile of {model}/{chosen}: {profile.rows} rows, {len(profile.inputs)} input and "
        f"{len(profile.outputs)} output columns -> {out}"
    )


@profile_group.command("show")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@_json_option
def profile_show(path: Path, as_json: bool) -> None:
    """Show a profile: its model, and each column's distribution and null rate.

    \b
    Example:
      failsoft profile show iris.profile.json
    """
    from failsoft.data.profiles import Profile, ProfileError

    try:
        profile = Profile.load(path)
    except ProfileError as error:
        raise Failed(str(error), 2) from None
    summary = profile.summary()
    if as_json:
        _echo_json(summary)
        return
    click.echo(
        f"model {profile.model} version {profile.version or '-'}, {profile.rows} rows from "
        f"{profile.source or '-'}, built {profile.created_at}\n"
        f"model sha256 {profile.model_sha256 or '-'}\nprofile sha256 {profile.sha256}\n"
    )
    rows = []
    for role in ("inputs", "outputs"):
        for item in summary[role]:
            rows.append(
                (
                    role[:-1],
                    item["name"] + (f" ({item['label']})" if item["label"] else ""),
                    item["kind"],
                    item["count"],
                    f"{100 * item['null_rate']:.2f}%",
                    _shape(item),
                )
            )
    click.echo(table(("ROLE", "COLUMN", "KIND", "COUNT", "NULL", "DISTRIBUTION"), rows))


def _shape(item: dict[str, Any]) -> str:
    if item["kind"] == "numeric":
        if item["count"] == 0 or item.get("p50") is None:
            return "-"
        return (
            f"min {item['min']:.4g}  p1 {item['p01']:.4g}  p50 {item['p50']:.4g}  "
            f"p99 {item['p99']:.4g}  max {item['max']:.4g}"
        )
    total = max(item["count"], 1)
    return "  ".join(f"{label}: {100 * count / total:.1f}%" for label, count in item["top"])


# -- drift --------------------------------------------------------------------------------


@click.group("drift")
def drift_group() -> None:
    """Online drift of the served models against their reference profiles.

    \b
    Example:
      failsoft drift status iris
      failsoft drift status iris --json
      failsoft drift status iris --png drift.png
    """


@drift_group.command("status")
@click.argument("model")
@click.option("--window", default=None, help="Show only this window (e.g. 30s or 1h).")
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw reference vs now for the worst features to this PNG file.",
)
@_json_option
@_gateway_options
def drift_status(
    model: str, window: str | None, png: Path | None, as_json: bool, gateway: Gateway
) -> None:
    """MODEL's drift per version and window: the verdict, and each feature's distance.

    A feature alerts when the low end of its bias-corrected distance (PSI for
    numbers, Jensen-Shannon for labels) is above the alert threshold; a window
    is judged from its minimum row count on.

    \b
    Example:
      failsoft drift status iris
      failsoft drift status iris --window 30s --png drift.png
    """
    cells = "?cells=1" if png is not None else ""
    answer = gateway.json("GET", f"/admin/drift/{quote(model, safe='')}{cells}")
    entry = answer["models"].get(model, {})
    if as_json:
        _echo_json(entry)
    else:
        click.echo(_status_text(model, entry, window))
    if png is not None:
        from failsoft.data.drift_chart import draw

        try:
            draw(model, entry, png, window=window, features=PNG_FEATURES)
        except OSError as error:
            raise Failed(f"{png}: cannot write: {error.strerror or error}") from None
        click.echo(f"chart: {png}", err=as_json)


def _status_text(model: str, entry: dict[str, Any], only: str | None) -> str:
    lines = []
    if entry.get("problem"):
        lines.append(f"drift is off for {model}: {entry['problem']}")
    for version, state in entry.get("versions", {}).items():
        verdict = "DRIFTING" if state["drifting"] else "ok"
        lines.append(
            f"{model}/{version}: {verdict}; {state['rows']} rows sketched; profile "
            f"{state['profile']['sha256'][:12]} ({state['profile']['rows']} rows)"
        )
        for report in state["windows"]:
            if only is not None and report["window"] != only:
                continue
            head = "DRIFTING" if report["drifting"] else "ok"
            if not report["judged"]:
                lines.append(
                    f"\n  window {report['window']}: {report['rows']} rows, too few to judge"
                )
                continue
            lines.append(
                f"\n  window {report['window']}: {head}, {report['rows']} rows, "
                f"{100 * report['share']:.0f}% of features alert"
            )
            rows = [
                (
                    feature["display"],
                    feature["role"],
                    feature["measure"],
                    _num(feature["value"]),
                    _num(feature["low"]),
                    f"{feature['warn']:g}/{feature['alert']:g}",
                    f"{100 * (feature['null_rate'] or 0):.2f}%",
                    feature["status"].upper()
                    if feature["status"] == "alert"
                    else feature["status"],
                )
                for feature in report["features"]
            ]
            if rows:
                body = table(
                    ("FEATURE", "ROLE", "MEASURE", "VALUE", "LOW", "WARN/ALERT", "NULL", "STATUS"),
                    rows,
                )
                lines.append("\n".join("    " + line for line in body.splitlines()))
        lines.append("")
    if not lines:
        return f"no drift monitor for {model}"
    return "\n".join(lines).rstrip()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# -- model push --profile ------------------------------------------------------------------


def profile_for_push(path: Path, model_sha256: str) -> bytes:
    """The bytes of the profile at ``path``, refusing one built from other model bytes."""
    from failsoft.data.profiles import Profile, ProfileError

    try:
        profile = Profile.load(path)
    except ProfileError as error:
        raise Failed(f"--profile: {error}", 2) from None
    if profile.model_sha256 is not None and profile.model_sha256 != model_sha256:
        raise Failed(
            f"--profile: {path} was built from a model file with sha256 "
            f"{profile.model_sha256[:16]}..., not this one ({model_sha256[:16]}...): "
            "build it again from this file",
            2,
        )
    return path.read_bytes()  # as checked: its sha256 is the profile's


def push_profile(gateway: Gateway, name: str, version: str, data: bytes) -> str:
    """Push a profile beside ``name@version``, as the artifact ``name@version.profile``."""
    query = urlencode({"name": name, "version": f"{version}.profile", "kind": "profile"})
    row = gateway.json(
        "POST", f"/admin/artifacts?{query}", raw=data, content_type="application/octet-stream"
    )
    digest = hashlib.sha256(data).hexdigest()
    if row.get("sha256") != digest:
        raise Failed(f"the gateway stored sha256 {row.get('sha256')} for the profile, not {digest}")
    return digest


def register(main: click.Group) -> None:
    main.add_command(profile_group)
    main.add_command(drift_group)
