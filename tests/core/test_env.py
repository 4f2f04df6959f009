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
