"""What every `fedrec` command module shares: the consoles, the --params / -S options, reading the config loudly,
JSON output, the progress bar, and named errors as one red line with exit code 2."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import Progress

from fedrec.core.config import Config, load_config, parse_overrides
from fedrec.core.errors import ConfigError, FedrecError

err = Console(stderr=True)
out = Console()

DEFAULT_PARAMS = Path("params.yaml")
ParamsOpt = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="params.yaml (the file DVC reads)")
SetOpt = typer.Option(None, "--set", "-S", help="override a config key, e.g. -S federation.rounds=5 (repeatable; "
                                                "`fedrec config --schema` lists the keys)")


def merged_overrides(sets: list[str] | None, extra: dict | None = None) -> dict:
    """-S key=value pairs plus the options a command maps onto config keys (None = not given)."""
    return parse_overrides(sets) | {k: v for k, v in (extra or {}).items() if v is not None}


def load_params(params: Path, overrides: dict | None, data: bool = False) -> Config:
    """The config, loudly: a --params file that does not exist is an error; no params.yaml here is a warning
    (the built-in defaults are used, which download MovieLens-100K unless FEDREC_DATA_DIR is set). ``data``: the
    command reads the pipeline's data, so a set data directory (FEDREC_DATA_DIR, data.raw_dir) must exist and hold
    MovieLens, also where data/ already holds prepared data."""
    if not params.exists():
        if params != DEFAULT_PARAMS:
            raise ConfigError(f"--params {params}: no such file")
        err.print(f"[yellow]warning:[/] no {params} in {Path.cwd()}: using the built-in defaults "
                  "(`fedrec config` shows them; run from the project directory or pass --params)", soft_wrap=True)
    cfg = load_config(params, overrides)
    if data:
        check_data(cfg)
    return cfg


def check_data(cfg: Config) -> None:
    """A set data directory (FEDREC_DATA_DIR, data.raw_dir) must exist and hold MovieLens (DataError)."""
    from fedrec.silo import data as pipeline

    pipeline.check_data_dir(cfg)


def command_config(params: Path, sets: list[str] | None, extra: dict | None = None, data: bool = False) -> Config:
    """The command's config (see :func:`load_params`)."""
    return load_params(params, merged_overrides(sets, extra), data)


def emit(payload: dict, output: Path | None, as_json: bool) -> bool:
    """Write the JSON summary to ``output`` if given; print it on stdout if ``as_json``. True when printed."""
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(payload, indent=2))
    if as_json:
        sys.stdout.write(json.dumps(payload) + "\n")
    return as_json


def progress_bar() -> Progress:
    from fedrec.core.progress import bar

    return bar("{task.description}", err)  # one line per update where stderr is no terminal (DVC stages)


def fail(exc: Exception) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can cause (named FedrecError) become one red line and exit code 2, not a traceback."""
    try:
        yield
    except FedrecError as exc:
        fail(exc)


