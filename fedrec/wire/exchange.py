"""Where payloads travel between silos and the coordinator: any fsspec URL.

A local directory by default (``state/exchange``); ``s3://bucket/fedrec``, ``gs://...`` or
``memory://`` work the same, so silos on other machines share one bucket instead of an RPC (S3 endpoint and
credentials the usual way: ``AWS_*`` variables, ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server).
A reader never sees half a payload and keys are write-once: a second write to a key is refused
(:class:`ExchangeConflictError`), atomically. On a local directory a payload is written to a temporary file and
hard-linked into place (the link refuses an existing target); on S3 it is one conditional PUT
(``If-None-Match: *``: the store itself lets exactly one of two racing writers win, no copy + delete); other
stores get fsspec's create mode (a look first: make such a bucket immutable too, against parties that bypass fedrec).
Waiting parties list each awaited prefix once per poll and, on object storage, back off from
``federation.poll_interval_s`` to ``federation.poll_max_interval_s`` (every look is a paid request there).
Parties write signed envelopes (:meth:`Exchange.post`) and read them back verified against the expected author
(:meth:`Exchange.read`), see :mod:`fedrec.wire.trust`.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from typing import Callable, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from fedrec.core.errors import PayloadError
from fedrec.core.ids import RUN_ID, SILO_ID, check_run_id, check_silo_id  # noqa: F401 (re-exported)
from fedrec.wire.trust import Identity, PublicIdentity, open_envelope, seal_envelope


class ExchangeConflictError(PayloadError):
    """A key on the exchange was written already: keys are write-once."""

#: transient I/O on the exchange (a network blip on object storage, EIO) is retried after these pauses; a
#: missing or existing key and named fedrec errors are not transient and are never retried
IO_RETRY_DELAYS = (0.2, 1.0, 3.0)


def _with_io_retries(fn):
    def wrapper(*args, **kwargs):
        for delay in (*IO_RETRY_DELAYS, None):
            try:
                return fn(*args, **kwargs)
            except (FileNotFoundError, FileExistsError, PayloadError):
                raise
            except OSError:
                if delay is None:
                    raise
                time.sleep(delay)
    return wrapper


class PayloadTooLargeError(PayloadError):
    """An object on the exchange is larger than federation.max_payload_bytes: not read."""


class Exchange:
    def __init__(self, url: str, run_id: str = "", max_bytes: int = 2 ** 30, max_poll_s: float = 1.0):
        self.url, self.run_id, self.max_bytes = url, run_id, max_bytes
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.local = isinstance(self.fs, LocalFileSystem)
        #: waiting on object storage backs off up to this many seconds between looks (locally looks are free)
        self.max_poll_s = max_poll_s
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    @_with_io_retries
    def put(self, key: str, data: bytes) -> int:
        path = self._path(key)
        try:
            if self.local:
                self._put_local(path, data)
            else:  # s3fs: a PUT with If-None-Match: *; other stores: fsspec's create mode
                self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            if self._same(path, data):  # our own earlier try landed before a transient error: not a conflict
                return len(data)
            raise ExchangeConflictError(f"{self.url}/{key} exists already: exchange keys are write-once") from None
        return len(data)

    def _put_local(self, path: str, data: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)  # atomic and refuses an existing target
        finally:
            os.unlink(tmp)

    def _same(self, path: str, data: bytes) -> bool:
        try:
            return self.fs.size(path) == len(data) and self.fs.cat_file(path) == data
        except OSError:
            return False

    def post(self, key: str, body: bytes, author: "Identity") -> int:
        """Write ``body`` under ``key``, signed by ``author`` (bound to this run and key)."""
        return self.put(key, seal_envelope(body, run_id=self.run_id, key=key, author=author))

    def read(self, key: str, author: "PublicIdentity") -> bytes:
        """The body under ``key`` if ``author`` signed it for this run and key, else
        :class:`~fedrec.wire.trust.SignatureError`."""
        return open_envelope(self.get(key), run_id=self.run_id, key=key, author=author)

    @_with_io_retries
    def get(self, key: str) -> bytes:
        """The bytes under ``key``; never more than ``max_bytes`` are read (a larger object is refused)."""
        try:
            if self.local:
                with open(self._path(key), "rb") as fh:
                    data = fh.read(self.max_bytes + 1)
            else:  # one ranged GET (opening a file on object storage costs a HEAD first)
                data = self.fs.cat_file(self._path(key), start=0, end=self.max_bytes + 1)
        except FileNotFoundError as exc:
            raise PayloadError(f"{self.url}/{key} does not exist (was the producing task run?)") from exc
        if len(data) > self.max_bytes:
            raise PayloadTooLargeError(f"{self.url}/{key} is larger than federation.max_payload_bytes="
                                       f"{self.max_bytes}: not read")
        return data

    def exists(self, key: str) -> bool:
        return key in self.present([key])

    def present(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` exist. On object storage one listing per distinct prefix (a missing key's
        ``exists`` costs a HEAD and a LIST there), locally one ``stat`` per key."""
        keys = list(keys)
        if self.local:
            return {k for k in keys if os.path.exists(self._path(k))}
        by_prefix: dict[str, list[str]] = {}
        for key in keys:
            by_prefix.setdefault(key.rpartition("/")[0], []).append(key)
        common = posixpath.commonpath(list(by_prefix)) if by_prefix else ""
        if len(by_prefix) > 2 and common and all(posixpath.dirname(p) == common for p in by_prefix):
            return set(keys) & set(self.keys(common))  # silos/<id>/left.json of every silo: one listing of silos/
        found = set()
        for prefix, group in by_prefix.items():
            names = self._names(prefix)
            found.update(k for k in group if k.rpartition("/")[2] in names)
        return found

    @_with_io_retries
    def _names(self, prefix: str) -> set[str]:
        path = self._path(prefix) if prefix else self.root
        try:
            listed = self.fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return set()
        finally:
            self.fs.invalidate_cache(path)  # a cached listing would hide keys written after it
        return {p.rstrip("/").rpartition("/")[2] for p in listed}

    def pauses(self, poll: float):
        """The pauses between looks of one wait: ``poll`` each locally; on object storage doubling from ``poll``
        up to ``max_poll_s`` (a party waiting a minute for a slow silo makes ~60 requests, not 3,000)."""
        delay = poll
        while True:
            yield delay
            if not self.local:
                delay = min(delay * 2, max(poll, self.max_poll_s))

    def wait_any(self, keys: Iterable[str], *, timeout: float, poll: float,
                 give_up: Callable[[], bool] | None = None,
                 pause: Callable[[float], None] = time.sleep) -> str | None:
        """The first of ``keys`` that exists, polling every ``poll`` s (``pause(poll)`` between looks); None
        after ``timeout`` s or as soon as ``give_up()`` says waiting is pointless (e.g. the producer died)."""
        keys = list(keys)
        deadline = time.monotonic() + timeout
        for delay in self.pauses(poll):
            found = self.present(keys)
            for key in keys:
                if key in found:
                    return key
            if time.monotonic() >= deadline or (give_up is not None and give_up()):
                return None
            pause(delay)

    def wait_all(self, keys: dict[str, str], *, timeout: float, poll: float,
                 gone: Callable[[], set[str]] | None = None,
                 on_arrival: Callable[[str], None] | None = None) -> set[str]:
        """Of ``{name: key}``, the names whose key appeared within ``timeout`` s. Stops early once every
        name has either arrived or is in ``gone()`` (producers known to be dead). ``on_arrival(name)`` is called
        once per name as its key appears (work on the early arrivals while the others are awaited)."""
        pending, arrived = dict(keys), set()
        deadline = time.monotonic() + timeout
        for delay in self.pauses(poll):
            found = self.present(pending.values())
            for name, key in list(pending.items()):
                if key in found:
                    arrived.add(name)
                    del pending[name]
                    if on_arrival is not None:
                        on_arrival(name)
            if not pending or time.monotonic() >= deadline:
                break
            if gone is not None and set(pending) <= gone():
                break
            time.sleep(delay)
        return arrived

    def keys(self, prefix: str = "") -> list[str]:
        base = self.root.rstrip("/") + "/"
        try:
            found = self.fs.find(self._path(prefix) if prefix else self.root)
        except FileNotFoundError:
            return []
        finally:
            self.fs.invalidate_cache()
        return sorted(p[len(base):] if p.startswith(base) else p for p in found)


def update_key(round_: int, silo_id: str) -> str:
    """A silo's masked, encrypted update (one per round: a silo never encrypts its update twice)."""
    return f"round-{round_:04d}/updates/{check_silo_id(silo_id)}.bin"


def mask_keys_key(round_: int, silo_id: str) -> str:
    """A participant's round mask key, self-mask commitment and sealed shares (fedrec.crypto.secagg)."""
    return f"round-{round_:04d}/masks/{check_silo_id(silo_id)}.json"


def _group(group: int) -> str:
    """federation.groups: the suffix of group ``group``'s keys (group 0 keeps the names of a one-sum round)."""
    if group < 0:
        raise ValueError(f"group must be >= 0, got {group}")
    return f"-g{group}" if group else ""


def mask_set_key(round_: int, group: int = 0) -> str:
    """The participants whose mask keys arrived: the set every update of the round is masked against."""
    return f"round-{round_:04d}/mask-set{_group(group)}.json"


def unmask_key(round_: int, group: int = 0) -> str:
    """The coordinator names the survivors (updates in the sum) and the dropped silos."""
    return f"round-{round_:04d}/unmask{_group(group)}.json"


def reveal_key(round_: int, silo_id: str) -> str:
    """A survivor's shares of the survivors' self-masks and of the dropped silos' mask keys."""
    return f"round-{round_:04d}/reveals/{check_silo_id(silo_id)}.json"


def decrypt_key(round_: int, attempt: int, group: int = 0) -> str:
    """The coordinator asks a silo to decrypt the round's sum (attempt > 0: the previous decryptor failed)."""
    return f"round-{round_:04d}/decrypt{_group(group)}-{attempt}.json"


def verdict_key(round_: int, attempt: int, group: int = 0) -> str:
    """A decryptor could not open the sum: why, and whose update was not a valid encoding."""
    return f"round-{round_:04d}/verdict{_group(group)}-{attempt}.json"


def fit_report_key(round_: int, silo_id: str) -> str:
    return f"round-{round_:04d}/reports/{check_silo_id(silo_id)}.json"


def metrics_key(round_: int, silo_id: str) -> str:
    return f"round-{round_:04d}/metrics/{check_silo_id(silo_id)}.json"


def instruction_key(round_: int, silo_id: str) -> str:
    return f"round-{round_:04d}/instructions/{check_silo_id(silo_id)}.json"


def aggregate_key(round_: int, group: int = 0) -> str:
    return f"round-{round_:04d}/aggregate{_group(group)}.bin"


def no_aggregate_key(round_: int, group: int = 0) -> str:
    """Written instead of the aggregate when no update arrived: the key holder stops waiting."""
    return f"round-{round_:04d}/no-aggregate{_group(group)}.json"


def mean_key(round_: int, attempt: int = 0, group: int = 0) -> str:
    """The decryptor's decryption of the sum: the round's mean update (never one silo's)."""
    return f"round-{round_:04d}/mean{_group(group)}-{attempt}.bin"


def vet_key(round_: int) -> str:
    """federation.robust_rule vetted: the coordinator asks the round's silos to score its candidate models."""
    return f"round-{round_:04d}/vet.json"


def candidate_key(round_: int, index: int) -> str:
    """robust_rule vetted: candidate ``index`` for the round's global model (0: every group; the others: the groups
    of fedrec.protocol.vetting.candidates), a plaintext payload like the global model."""
    return f"round-{round_:04d}/candidates/{int(index):03d}.bin"


def vote_key(round_: int, silo_id: str) -> str:
    """robust_rule vetted: a silo's validation sums for each candidate model of the round."""
    return f"round-{round_:04d}/votes/{check_silo_id(silo_id)}.json"


def hello_key(silo_id: str) -> str:
    return f"silos/{check_silo_id(silo_id)}/hello.json"


def left_key(silo_id: str) -> str:
    """Written by a silo agent that stops before the run's end (with the error's kind), so nobody waits for it."""
    return f"silos/{check_silo_id(silo_id)}/left.json"


def sealed_context_key(silo_id: str) -> str:
    """The run's CKKS secret context, sealed by the key holder to this silo's X25519 key."""
    return f"context/sealed/{check_silo_id(silo_id)}.bin"


COORDINATOR_KEY = "parties/coordinator.json"
ADMISSION_KEY = "admission.json"
STOP_KEY = "stop.json"


def global_key(round_: int) -> str:
    """Global (item-tower) parameters after ``round_`` rounds; round 0 is the initial model."""
    return f"global/round-{round_:04d}.bin"


PUBLIC_CONTEXT_KEY = "context/public.ctx"


def run_exchange(cfg, run_id: str) -> Exchange:
    """The exchange of one federation run: ``federation.exchange_url``/<run_id>."""
    check_run_id(run_id)
    fed = cfg.federation
    return Exchange(f"{fed.exchange_url.rstrip('/')}/{run_id}", run_id, fed.max_payload_bytes, fed.poll_max_interval_s)
