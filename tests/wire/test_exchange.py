"""fedrec.wire.exchange: payload transport over any fsspec URL."""

from __future__ import annotations

import uuid

import pytest

from fedrec.core.errors import PayloadError
from fedrec.wire.exchange import (
    Exchange,
    ExchangeConflictError,
    aggregate_key,
    global_key,
    update_key,
)


def _urls(tmp_path):
    return [str(tmp_path / "exchange"), f"memory://fedrec-test-{uuid.uuid4().hex}"]


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_put_get_keys(tmp_path, kind):
    # Prepare
    url = _urls(tmp_path)[0 if kind == "local" else 1]
    ex = Exchange(url)

    # Execute
    sent = ex.put(update_key(1, "a"), b"alpha")
    ex.put(update_key(1, "b"), b"beta-beta")
    ex.put(aggregate_key(1), b"sum")
    ex.put(global_key(0), b"g0")
    with pytest.raises(ExchangeConflictError, match="write-once"):
        ex.put(update_key(1, "a"), b"alpha-2")  # keys are written once

    # Assert
    assert sent == 5
    assert ex.get(update_key(1, "a")) == b"alpha"
    assert ex.get("round-0001/updates/b.bin") == b"beta-beta"
    assert ex.exists(aggregate_key(1)) and not ex.exists(aggregate_key(2))
    assert ex.keys() == ["global/round-0000.bin", "round-0001/aggregate.bin",
                         "round-0001/updates/a.bin", "round-0001/updates/b.bin"]
    assert ex.keys("round-0001/updates") == ["round-0001/updates/a.bin", "round-0001/updates/b.bin"]
    assert ex.keys("round-0009") == []
    # a second client on the same URL sees the same payloads (no temp files left behind)
    assert Exchange(url).get(global_key(0)) == b"g0"


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_missing_key_raises_payload_error(tmp_path, kind):
    url = _urls(tmp_path)[0 if kind == "local" else 1]
    ex = Exchange(url)

    with pytest.raises(PayloadError, match=r"round-0003/aggregate\.bin does not exist"):
        ex.get(aggregate_key(3))


def test_local_exchange_writes_files(tmp_path):
    ex = Exchange(str(tmp_path / "ex"))

    ex.put(update_key(12, "other"), b"\x00\x01")

    assert (tmp_path / "ex" / "round-0012" / "updates" / "other.bin").read_bytes() == b"\x00\x01"
    assert [p.name for p in (tmp_path / "ex" / "round-0012" / "updates").iterdir()] == ["other.bin"]


def test_a_writer_killed_mid_write_leaves_no_readable_payload(tmp_path):
    # Prepare: a process writes a 400 MB payload to the exchange and is killed while it writes
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "ex"
    writer = subprocess.Popen([sys.executable, "-c", (
        "from fedrec.wire.exchange import Exchange, update_key\n"
        f"Exchange({str(root)!r}).put(update_key(1, 'a'), b'x' * (400 * 2**20))\n")])
    deadline = time.monotonic() + 60
    while not list(root.rglob(".*.tmp")) and time.monotonic() < deadline and writer.poll() is None:
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()

    # Assert: the half-written temporary file is never the key; a reader sees no payload at all
    ex = Exchange(str(root))
    assert writer.returncode == -signal.SIGKILL
    assert not ex.exists(update_key(1, "a"))
    with pytest.raises(PayloadError, match="does not exist"):
        ex.get(update_key(1, "a"))


def test_transient_io_errors_are_retried_and_named_errors_are_not(tmp_path, monkeypatch):
    from fedrec.wire import exchange as exchange_module

    monkeypatch.setattr(exchange_module, "IO_RETRY_DELAYS", (0.0, 0.0))
    ex = Exchange(f"memory://fedrec-flaky-{uuid.uuid4().hex}")  # object storage: one write call per payload
    real_pipe, failures = ex.fs.pipe_file, []

    def flaky_pipe(path, data, **kw):
        if len(failures) < 2:  # the object store blips twice
            failures.append(path)
            raise OSError(5, "Input/output error")
        return real_pipe(path, data, **kw)

    monkeypatch.setattr(ex.fs, "pipe_file", flaky_pipe)
    ex.put(update_key(1, "a"), b"alpha")

    assert len(failures) == 2 and ex.get(update_key(1, "a")) == b"alpha"
    with pytest.raises(ExchangeConflictError):  # named: not retried into success
        ex.put(update_key(1, "a"), b"again")


def test_wait_all_hands_over_each_arrival_once_while_it_waits_for_the_rest(tmp_path):
    # Prepare: two updates present, a third written by another party while the first two are handled
    import threading

    ex = Exchange(str(tmp_path / "exchange"))
    ex.put(update_key(1, "a"), b"a")
    ex.put(update_key(1, "b"), b"b")
    handed = []

    def on_arrival(name):
        handed.append((name, ex.exists(update_key(1, "c"))))
        if len(handed) == 1:  # the last silo's update comes in while an early one is worked on
            threading.Timer(0.05, ex.put, (update_key(1, "c"), b"c")).start()

    # Act
    arrived = ex.wait_all({s: update_key(1, s) for s in "abcd"}, timeout=1.0, poll=0.01, on_arrival=on_arrival)

    # Assert: each arrival handed over once, the early ones before the late one was there; "d" never came
    assert arrived == {"a", "b", "c"}
    assert sorted(name for name, _ in handed) == ["a", "b", "c"] and len(handed) == 3
    assert [late for name, late in handed if name in "ab"] == [False, False]
