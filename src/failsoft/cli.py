"""The `failsoft` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from failsoft import (
    __version__,
    cli_control,
    cli_drift,
    cli_flags,
    cli_instances,
    cli_map,
    cli_rollouts,
    cli_slo,
    cli_trace,
)
from failsoft.config import Config, ConfigError, load_config, missing_files


def _load_or_exit(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        click.echo(f"{error.source}: invalid configuration", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="failsoft")
def main() -> None:
    """failsoft: keep correct predictions flowing through failing model replicas.

    \b
    Start here:
      failsoft demo                          serve bundled demo models on :8000
      failsoft serve --config failsoft.yaml  serve your own configuration
      failsoft check-config failsoft.yaml    validate a configuration
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where demo models are cached [default: ~/.cache/failsoft/demo].",
)
def demo(host: str, port: int, data_dir: Path | None) -> None:
    """Train and serve the demo models (iris, breast-cancer), no downloads needed.

    On first run this trains on scikit-learn's bundled datasets, exports the
    models to ONNX and caches them; later runs start in seconds. iris v1 runs
    in 2 supervised worker processes, iris v2 and breast-cancer in-process.

    \b
    Example:
      failsoft demo --port 8000
      curl -s localhost:8000/v2/models/iris
    """
    from failsoft.demo import default_data_dir, prepare_demo, usage_text
    from failsoft.server.serve import serve

    config_path = prepare_demo(data_dir or default_data_dir(), progress=_progress)
    config = _load_or_exit(config_path)
    click.echo(f"failsoft: demo configuration at {config_path}", err=True)
    serve(config, host=host, port=port, on_ready=lambda url: click.echo(usage_text(url)))


def _progress(message: str) -> None:
    click.echo(f"failsoft: {message}", err=True)


@main.command("serve")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML configuration file.",
)
@click.option("--host", default=None, help="Override server.host.")
@click.option(
    "--port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Override server.port (0 picks a free one).",
)
@click.option(
    "--chaos",
    is_flag=True,
    help="Allow fault injection (chaos.enabled) for this run: for drills, never production.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The control store's folder [default: store.data_dir, else <file name>-data "
    "next to the file].",
)
@click.option(
    "--apply",
    "apply_file",
    is_flag=True,
    help="Store the file as a new revision and serve it, even when the store holds one.",
)
@click.option(
    "--no-store",
    is_flag=True,
    help="Serve the file as it is: no control store, no revisions, no live changes.",
)
def serve_command(
    config_path: Path,
    host: str | None,
    port: int | None,
    chaos: bool,
    data_dir: Path | None,
    apply_file: bool,
    no_store: bool,
) -> None:
    """Serve the models of a configuration file, through the control store.

    The store is the truth. With an empty store the file becomes revision 1;
    with revisions stored, the gateway serves the newest applied one, and
    says how it differs from the file (`--apply` stores the file as a new
    revision). Change it live with `failsoft apply`.

    \b
    Example:
      failsoft serve --config failsoft.yaml --port 8000
    Logs are JSON lines on stderr; the first says where it listens.
    Stop with Ctrl-C or SIGTERM: in-flight requests finish, workers drain.
    """
    from failsoft.server.serve import StoreChoice, serve

    config = _load_or_exit(config_path)

    def overrides(served: Config) -> Config:
        if not chaos:
            return served
        enabled = served.chaos.model_copy(update={"enabled": True})
        return served.model_copy(update={"chaos": enabled})

    store = None
    if not no_store:
        folder = data_dir or config.store.data_dir or default_data_dir(config_path)
        store = StoreChoice(folder, apply_file=apply_file, overrides=overrides)
    serve(overrides(config), host=host, port=port, store=store)


def default_data_dir(config_path: Path) -> Path:
    """``<file name>-data`` next to the configuration file."""
    return config_path.resolve().parent / f"{config_path.stem}-data"


@main.group()
def keys() -> None:
    """Manage tenant API keys (only their sha256 is ever stored)."""


@keys.command("add")
@click.argument("name")
def keys_add(name: str) -> None:
    """Make a new API key for tenant NAME and print it once, with the YAML to paste.

    The key itself is not stored anywhere: paste the printed entry under
    `tenants:` in your configuration and hand the key to the tenant, who sends
    it as `Authorization: Bearer <key>`.

    \b
    Example:
      failsoft keys add acme >> tenants-snippet.yaml
    """
    from failsoft.control.tenants import key_entry_yaml, new_key

    key = new_key()
    try:
        entry = key_entry_yaml(name, key)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="NAME") from None
    click.echo(f"API key for {name} (shown once, store it now): {key}", err=True)
    click.echo(entry)


@main.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="Treat missing model files as errors.")
def check_config(config_path: Path, strict: bool) -> None:
    """Validate a configuration file: print `ok` or each problem with its key path.

    Exits 0 when valid, 2 when not. Missing model files are warnings
    (errors with --strict), since configs are often checked away from
    the machine that serves them.

    \b
    Example:
      failsoft check-config failsoft.yaml
    """
    from failsoft.data.drift_service import profile_problems

    config = _load_or_exit(config_path)
    no_profile, wrong_profile = profile_problems(config.models)
    missing = missing_files(config) + no_profile
    for line in missing:
        click.echo(f"{'error' if strict else 'warning'}: {line}", err=True)
    for line in wrong_profile:
        click.echo(f"error: {line}", err=True)
    if (missing and strict) or wrong_profile:
        sys.exit(2)
    click.echo("ok")


# --- chaos: faults and drills ------------------------------------------------------

_URL_OPTION = click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The running failsoft to steer.",
)
_TOKEN_OPTION = click.option(
    "--token-env",
    default="FAILSOFT_ADMIN_TOKEN",
    show_default=True,
    help="Environment variable holding the admin token.",
)


def _admin_call(url: str, token_env: str, action: str, *args: object) -> object:
    import asyncio
    import os

    from failsoft.drills.target import AdminClient, TargetError

    async def run() -> object:
        client = AdminClient(url, os.environ.get(token_env))
        try:
            return await getattr(client, action)(*args)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except TargetError as error:
        click.echo(f"failsoft: {error}", err=True)
        sys.exit(1)


@main.group()
def fault() -> None:
    """Inject, list and clear chaos faults on a running failsoft.

    The gateway must run with chaos enabled (`chaos: {enabled: true}` or
    `failsoft serve --chaos`). Every fault expires by itself after --for
    seconds (capped by chaos.max_duration_s, 5 minutes by default).

    \b
    Example:
      export FAILSOFT_ADMIN_TOKEN=...
      failsoft fault add kill iris --version v1 --replica w0 --for 30
      failsoft fault add latency iris --latency-ms 300 --probability 0.5 --for 60
      failsoft fault list
      failsoft fault clear
    """


@fault.command("add")
@click.argument("kind", type=click.Choice(["latency", "error", "hang", "garbage", "drop", "kill"]))
@click.argument("model")
@click.option("--version", "version_name", default=None, help="Only this version.")
@click.option("--replica", default=None, help="Only this replica (r0, w1, ...).")
@click.option(
    "--for", "duration_s", type=float, default=60.0, show_default=True, help="Seconds it lasts."
)
@click.option("--probability", type=float, default=1.0, show_default=True)
@click.option("--latency-ms", type=float, default=0.0, help="latency: added delay.")
@click.option("--jitter-ms", type=float, default=0.0, help="latency: up to this much more.")
@click.option("--concurrency", type=int, default=None, help="latency: calls served at once.")
@click.option("--status", type=int, default=500, show_default=True, help="error: HTTP status.")
@click.option("--exception", is_flag=True, help="error: fail as a model exception instead.")
@click.option("--every", "every_s", type=float, default=None, help="kill: repeat every N s.")
@_URL_OPTION
@_TOKEN_OPTION
def fault_add(
    kind: str,
    model: str,
    version_name: str | None,
    replica: str | None,
    duration_s: float,
    probability: float,
    latency_ms: float,
    jitter_ms: float,
    concurrency: int | None,
    status: int,
    exception: bool,
    every_s: float | None,
    url: str,
    token_env: str,
) -> None:
    """Add a KIND fault to MODEL: latency, error, hang, garbage, drop or kill."""
    spec: dict[str, object] = {
        "kind": kind,
        "model": model,
        "version": version_name,
        "replica": replica,
        "duration_s": duration_s,
        "probability": probability,
    }
    if kind == "latency":
        spec.update(latency_ms=latency_ms, jitter_ms=jitter_ms, concurrency=concurrency)
    if kind == "error":
        spec.update(status=status, error="exception" if exception else "status")
    if kind == "kill":
        spec["every_s"] = every_s
    added = _admin_call(
        url, token_env, "add_fault", {k: v for k, v in spec.items() if v is not None}
    )
    assert isinstance(added, dict)
    click.echo(f"fault {added['id']} added: {kind} on {model}, expires in {added['remaining_s']} s")


@fault.command("list")
@_URL_OPTION
@_TOKEN_OPTION
def fault_list(url: str, token_env: str) -> None:
    """List the active faults."""
    listed = _admin_call(url, token_env, "list_faults")
    assert isinstance(listed, dict)
    if not listed["enabled"]:
        click.echo("chaos is disabled on this gateway")
    if not listed["faults"]:
        click.echo("no active faults")
    for item in listed["faults"]:
        target = "/".join(str(item.get(key, "*")) for key in ("model", "version", "replica"))
        click.echo(
            f"{item['id']:<5} {item['kind']:<8} {target:<24} "
            f"p={item['probability']:g} injected={item['injected']} "
            f"expires in {item['remaining_s']:.0f} s"
        )


@fault.command("clear")
@click.argument("fault_id", required=False)
@_URL_OPTION
@_TOKEN_OPTION
def fault_clear(fault_id: str | None, url: str, token_env: str) -> None:
    """End fault FAULT_ID now, or every fault when no id is given."""
    if fault_id is None:
        _admin_call(url, token_env, "clear_faults")
        click.echo("every fault cleared")
    else:
        _admin_call(url, token_env, "end_fault", fault_id)
        click.echo(f"fault {fault_id} cleared")


@main.group()
def drill() -> None:
    """Chaos drills: drive load, inject faults, judge the gateway with a scorecard.

    \b
    Example:
      failsoft drill run drills/replica-crash.yaml
      failsoft drill suite drills --short
    """


def _drill_target(config: Path | None, url: str | None) -> object:
    from failsoft.drills.runner import TargetChoice

    if config is not None and url is not None:
        raise click.UsageError("give --config or --url, not both")
    if config is not None:
        _load_or_exit(config)  # a bad target is refused before any drill starts
    return TargetChoice(config=config, url=url)


_CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Start this configuration as the target (chaos enabled for the run).",
)
_DRILL_URL_OPTION = click.option(
    "--url", default=None, help="Run against this running failsoft (admin token in env)."
)
_OUT_OPTION = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("drill-results"),
    show_default=True,
    help="Where the JSON scorecards and PNG timelines go.",
)
_SHORT_OPTION = click.option(
    "--short",
    "short_s",
    type=float,
    default=None,
    is_flag=False,
    flag_value=10.0,
    help="Shrink every drill's timeline to this many seconds of load (10 when given alone).",
)


def _load_experiment_or_exit(path: Path) -> object:
    from failsoft.drills.experiment import ExperimentError, load_experiment

    try:
        return load_experiment(path)
    except ExperimentError as error:
        click.echo(f"{error.source}: invalid drill", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


@drill.command("run")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_CONFIG_OPTION
@_DRILL_URL_OPTION
@_OUT_OPTION
@_SHORT_OPTION
def drill_run(
    file: Path, config_path: Path | None, url: str | None, out_dir: Path, short_s: float | None
) -> None:
    """Run the drill in FILE and print its scorecard; exit 1 if it fails.

    The target is the drill's own `target:` unless --config or --url is given.

    \b
    Example:
      failsoft drill run drills/replica-hang.yaml --config failsoft.yaml
    """
    from failsoft.drills.experiment import Experiment
    from failsoft.drills.report import render, write_outputs
    from failsoft.drills.runner import TargetChoice, run_drill
    from failsoft.drills.target import TargetError

    experiment = _load_experiment_or_exit(file)
    assert isinstance(experiment, Experiment)
    choice = _drill_target(config_path, url)
    assert isinstance(choice, TargetChoice)
    if choice == TargetChoice() and experiment.target is None:
        choice = TargetChoice(config=_demo_config())
    scale = experiment.scale_for(short_s)
    try:
        card = run_drill(experiment, choice, scale=scale, progress=_progress)
    except TargetError as error:
        click.echo(f"failsoft: {error}", err=True)
        sys.exit(2)
    click.echo(render(card, color=sys.stdout.isatty()))
    json_path, png_path = write_outputs(card, experiment, out_dir)
    click.echo(f"scorecard: {json_path}  timeline: {png_path}")
    sys.exit(0 if card.passed else 1)


def _demo_config() -> Path:
    from failsoft.demo import default_data_dir, prepare_demo

    return prepare_demo(default_data_dir(), progress=_progress)


@drill.command("suite")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=Path("drills"))
@_CONFIG_OPTION
@_DRILL_URL_OPTION
@_OUT_OPTION
@_SHORT_OPTION
@click.option(
    "--jobs",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Run this many drills at once, each against its own target (not with --url). "
    "Faster, but drills running together share the machine's cores: keep figures from "
    "a run of one at a time.",
)
def drill_suite(
    folder: Path,
    config_path: Path | None,
    url: str | None,
    out_dir: Path,
    short_s: float | None,
    jobs: int,
) -> None:
    """Run every drill in FOLDER (default: drills) against the demo configuration.

    Prints each scorecard, then a summary with the resilience score (the share
    of drills passed); exits 1 if any drill fails. Use --config to run the
    suite against your own configuration instead.

    \b
    Example:
      failsoft drill suite drills --short
      failsoft drill suite drills --short --jobs 3   # three drills at a time
    """
    from failsoft.drills.report import render, write_outputs
    from failsoft.drills.runner import TargetChoice
    from failsoft.drills.suite import load_suite, run_suite

    try:
        experiments = load_suite(folder)
    except Exception as error:  # ExperimentError, with every problem listed
        problems = getattr(error, "problems", [str(error)])
        click.echo(f"{folder}: invalid drills", err=True)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    choice = _drill_target(config_path, url)
    assert isinstance(choice, TargetChoice)
    if jobs > 1 and choice.url is not None:
        raise click.UsageError(
            "--jobs runs drills at once, each against a target it starts; drills against "
            "one running gateway (--url) would mix their faults: leave --jobs at 1"
        )
    if choice == TargetChoice():
        choice = TargetChoice(config=_demo_config())
    color = sys.stdout.isatty()

    def show(experiment: object, card: object) -> None:
        click.echo(render(card, color=color))  # type: ignore[arg-type]
        write_outputs(card, experiment, out_dir)  # type: ignore[arg-type]

    result = run_suite(
        experiments, choice, short_s=short_s, jobs=jobs, progress=_progress, on_card=show
    )
    click.echo("\nsuite summary:")
    for (experiment, card, problem), seconds in zip(result.cards, result.seconds, strict=True):
        verdict = "passed" if card is not None and card.passed else "FAILED"
        failing = [c.name for c in card.checks if not c.ok] if card is not None else [problem]
        line = f"  {verdict:<7} {experiment.name:<24} {seconds:5.1f}s  {'; '.join(failing)}"
        click.echo(click.style(line, fg="red", bold=True) if color and failing else line)
    total = len(result.cards)
    click.echo(
        f"resilience score: {result.score_pct:.0f}% ({result.passed} of {total} drills passed); "
        f"scorecards in {out_dir}"
    )
    sys.exit(0 if result.passed == total else 1)


cli_control.register(main)  # apply, config, model, registry, audit, token, backup, restore
cli_flags.register(main)  # flag, halt, switch
cli_drift.register(main)  # profile, drift
cli_instances.register(main)  # instances
cli_trace.register(main)  # trace, accuracy
cli_rollouts.register(main)  # rollout
cli_map.register(main)  # map
cli_slo.register(main)  # slo, incident
