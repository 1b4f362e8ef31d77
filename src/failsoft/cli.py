"""The `failsoft` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from failsoft import __version__
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
def serve_command(config_path: Path, host: str | None, port: int | None) -> None:
    """Serve the models of a configuration file.

    \b
    Example:
      failsoft serve --config failsoft.yaml --port 8000
    Logs are JSON lines on stderr; the first says where it listens.
    Stop with Ctrl-C or SIGTERM: in-flight requests finish, workers drain.
    """
    from failsoft.server.serve import serve

    serve(_load_or_exit(config_path), host=host, port=port)


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
    config = _load_or_exit(config_path)
    missing = missing_files(config)
    for line in missing:
        click.echo(f"{'error' if strict else 'warning'}: {line}", err=True)
    if missing and strict:
        sys.exit(2)
    click.echo("ok")
