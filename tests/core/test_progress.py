"""Progress where stderr is not a terminal (a DVC stage, CI): one plain line per step, not silence until the end."""

from __future__ import annotations

import io

from rich.console import Console

from fedrec.core.progress import bar


def test_a_bar_on_a_non_terminal_prints_one_line_per_step_as_it_happens():
    # Prepare: a console writing to a file, as under `dvc repro` or `2> log`
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False, width=200)

    # Execute: three epochs, reading the output after the second
    with bar("{task.description}", console) as progress:
        task = progress.add_task("neumf", total=3, status="")
        progress.update(task, advance=1, status="seed 0 epoch 1 loss 0.5000")
        progress.update(task, advance=1, status="seed 0 epoch 2 loss 0.4000")
        seen_midway = sink.getvalue()
        progress.update(task, advance=1, status="seed 0 epoch 3 loss 0.3000")

    # Assert: the lines came while it ran, in order, with n/N
    assert seen_midway.splitlines()[0].startswith("neumf 1/3 seed 0 epoch 1 loss 0.5000")
    assert seen_midway.splitlines()[1].startswith("neumf 2/3 seed 0 epoch 2")
    assert [line.split()[1] for line in sink.getvalue().splitlines()] == ["1/3", "2/3", "3/3"]


def test_a_bar_on_a_terminal_draws_rich_and_no_plain_lines():
    # Prepare
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=True, width=100)

    # Execute
    with bar("rounds", console) as progress:
        task = progress.add_task("rounds", total=2, status="")
        progress.update(task, advance=2, status="done")

    # Assert: Rich's bar (drawn with control codes), not the one-line fallback
    assert not progress.lines and "\x1b[" in sink.getvalue() and "2/2" in sink.getvalue()
