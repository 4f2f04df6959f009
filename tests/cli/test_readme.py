"""Every command the README shows runs as written: each `fedrec ...` line parses against the real CLI (command,
options, values), each `make` target exists, and the README's recommendation example names a user of that silo
on ML-100K. (The commands themselves are exercised by the tests of each feature: test_dvc runs the README's
`dvc exp run -S ...` in a clean clone.)"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import typer

try:  # Typer >= 0.20 carries its own copy of click: its commands and errors are of that copy's classes
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older Typer
    from click.exceptions import UsageError

from fedrec.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _commands(program: str) -> list[list[str]]:
    """The README's bash code lines (and each part of a `a && b` line) that call ``program``, with comments and
    redirections cut off."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            part: list[str] = []
            for token in [*lexer, ";"]:
                if token in ("&&", "||", "|", ";", "&", ">", ">>", "<"):
                    if part[:1] == [program]:
                        found.append(part[1:])
                    part = [] if token != ">" else ["(redirect)"]
                else:
                    part.append(token)
    return found


def _parse(words: list[str]):
    """Parse a command line the way `fedrec` would, without running it (a click.UsageError if it would not)."""
    command = typer.main.get_command(app)
    ctx = command.make_context("fedrec", list(words), resilient_parsing=False)
    while hasattr(command, "resolve_command"):  # a group: descend to the subcommand
        pending = list(getattr(ctx, "protected_args", None) or getattr(ctx, "_protected_args", [])) + ctx.args
        name, sub, rest = command.resolve_command(ctx, pending)
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)
    return ctx


def test_the_readme_shows_fedrec_commands():
    assert len(_commands("fedrec")) >= 10


@pytest.mark.parametrize("words", _commands("fedrec"), ids=lambda w: " ".join(w)[:60])
def test_each_readme_fedrec_command_parses_as_written(words):
    ctx = _parse(words)

    assert ctx.command.callback is not None  # a command that runs, not a group


def test_a_wrong_option_would_be_caught():
    with pytest.raises(UsageError):
        _parse(["recommend", "--silo", "3", "--user", "42", "--top", "10"])


def test_readme_make_targets_exist():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    used = {words[0] for words in _commands("make") if words}

    assert used and used <= targets, used - targets


@pytest.mark.skipif(not os.environ.get("FEDREC_DATA_DIR"), reason="needs ML-100K (FEDREC_DATA_DIR)")
def test_the_readme_recommendation_example_names_a_user_of_that_silo(tmp_path, monkeypatch):
    from fedrec.core.config import load_config
    from fedrec.core.data.files import load, write_example
    from fedrec.silo import data as pipeline

    examples = [w for w in _commands("fedrec") if w[0] == "recommend"]
    cfg = load_config(ROOT / "params.yaml", {"data.work_dir": str(tmp_path / "data")})
    pipeline.ensure_partitioned(cfg)
    # the own-data quickstart's example (`fedrec example-data myfed`): its silos are named, MovieLens's are numbers
    write_example(tmp_path / "myfed")
    monkeypatch.chdir(tmp_path / "myfed")  # its params' paths are relative, as the quickstart runs them
    own = load(load_config("params.yaml")).users

    assert examples and any(not _parse(w).params["silo"].isdigit() for w in examples)
    for words in examples:
        params = _parse(words).params
        if params["silo"].isdigit():
            users = set(pipeline.silo_interactions(cfg, params["silo"])["user_id"])
        else:
            users = set(own.loc[own["silo_id"] == params["silo"], "user_id"])
        assert params["user"] in users, f"README: user {params['user']} is not in silo {params['silo']}"
