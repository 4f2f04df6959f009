"""Process defaults every entry point applies (fedrec.core.env)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import psutil
import pytest

from fedrec.core import env


def test_malloc_arenas_are_limited_here_and_in_started_processes_unless_the_user_says_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    env.apply_defaults(tmp_path)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['MALLOC_ARENA_MAX'])"],
                           capture_output=True, text=True, check=True).stdout.strip()

    assert os.environ["MALLOC_ARENA_MAX"] == child == env.MALLOC_ARENAS
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    env.apply_defaults(tmp_path)
    assert os.environ["MALLOC_ARENA_MAX"] == "4"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_heap_gives_freed_pages_back():
    rss = lambda: psutil.Process().memory_info().rss  # noqa: E731
    blocks = [bytearray(1000) for _ in range(200_000)]  # ~200 MB of small heap chunks, not mmapped
    pin = [bytearray(1000) for _ in range(10)]  # above them: glibc cannot just lower the heap's top
    held = rss()
    del blocks

    env.trim_heap()

    assert held - rss() > 100 * 2**20 and len(pin) == 10  # without the trim: 12 MB (measured)


EXIT_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from fedrec.core.env import exit_now
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
if sys.argv[2] == "thread":  # a non-daemon thread still working: the ordinary exit waits for it
    threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
sys.stdout.write("unflushed")  # no newline, still buffered (stdout is a pipe)
exit_now(int(sys.argv[3]) if sys.argv[3].isdigit() else sys.argv[3])
"""


@pytest.mark.parametrize(("mode", "code", "status"), [("plain", "3", 3), ("thread", "0", 0), ("plain", "boom", 1)])
def test_exit_now_keeps_the_exit_status_the_atexit_handlers_buffered_output_and_running_threads(tmp_path, mode, code,
                                                                                                 status):
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path), mode, code], capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == status
    assert done.stdout == "unflushed"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").exists() == (mode == "thread")
    assert ("boom" in done.stderr) == (code == "boom")
