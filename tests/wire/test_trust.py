"""fedrec.wire.trust: identities kept private, signed envelopes bound to run and key, sealed blobs only their
recipient opens, rosters, and the leak scanner's memory search (control: it finds a secret key where it is)."""

from __future__ import annotations

import pickle
import stat

import pytest

from fedrec.core.config import CryptoConfig
from fedrec.core.errors import ConfigError, PayloadError
from fedrec.crypto.ckks import create_keys
from fedrec.wire.trust import (
    Identity,
    Roster,
    RosterError,
    SignatureError,
    open_envelope,
    seal,
    seal_envelope,
)

from support import leakscan


def test_an_identity_is_made_once_kept_private_and_never_serialised(tmp_path):
    first = Identity.load_or_create(tmp_path / "identity", "a")
    again = Identity.load_or_create(tmp_path / "identity", "a")

    key_file = tmp_path / "identity" / "identity.key"
    assert first.public == again.public
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert key_file.read_bytes().hex() not in repr(first) and first.public.sign in first.public.to_dict().values()
    with pytest.raises(TypeError, match="not serialisable"):
        pickle.dumps(first)


def test_a_corrupt_identity_file_is_a_named_error(tmp_path):
    (tmp_path / "identity.key").write_bytes(b"short")

    with pytest.raises(ConfigError, match="not a fedrec identity key file"):
        Identity.load_or_create(tmp_path, "a")


@pytest.mark.parametrize("change", ["body", "run", "key", "author"])
def test_an_envelope_opens_only_as_signed(change):
    a, b = Identity.generate("a"), Identity.generate("b")
    signed = seal_envelope(b"payload", run_id="run-1", key="round-0001/x.bin", author=a)
    assert open_envelope(signed, run_id="run-1", key="round-0001/x.bin", author=a.public) == b"payload"

    kwargs = {"run_id": "run-1", "key": "round-0001/x.bin", "author": a.public}
    data = signed
    if change == "body":
        data = signed[:-1] + b"!"
    elif change == "run":
        kwargs["run_id"] = "run-2"
    elif change == "key":
        kwargs["key"] = "round-0002/x.bin"
    else:
        kwargs["author"] = b.public
    with pytest.raises(SignatureError):
        open_envelope(data, **kwargs)


def test_a_sealed_blob_opens_only_for_its_recipient_and_context():
    a, b = Identity.generate("a"), Identity.generate("b")
    blob = seal(b"secret context", a.public, b"run-1|a")

    assert a.unseal(blob, b"run-1|a") == b"secret context"
    assert b"secret context" not in blob
    for who, context in ((b, b"run-1|a"), (a, b"run-2|a")):
        with pytest.raises(PayloadError, match="does not open"):
            who.unseal(blob, context)


def test_pairwise_secrets_agree_and_depend_on_the_info():
    a, b, c = (Identity.generate(n) for n in "abc")

    assert a.shared_secret(b.public, b"r1") == b.shared_secret(a.public, b"r1")
    assert a.shared_secret(b.public, b"r1") != a.shared_secret(b.public, b"r2")
    assert a.shared_secret(b.public, b"r1") != a.shared_secret(c.public, b"r1")


def test_roster_round_trip_and_errors(tmp_path):
    roster = Roster({n: Identity.generate(n).public for n in ("coordinator", "a")})
    assert Roster.from_json(roster.to_json()) == roster
    with pytest.raises(RosterError, match="not in the federation roster"):
        roster.get("z")
    with pytest.raises(RosterError, match="names party"):
        Roster.from_json(roster.to_json().replace(b'"name": "a"', b'"name": "b"'))
    with pytest.raises(ConfigError, match="does not exist"):
        Roster.load(tmp_path / "missing.json")


@pytest.mark.slow
def test_the_memory_scan_finds_a_secret_key_in_a_process_that_holds_one(tmp_path):
    """Control for the coordinator's memory scan (test_parties): another process loads a secret context; the scan
    finds SEAL's in-memory key (64-byte windows of its uint64 coefficients) there."""
    import subprocess
    import sys

    keys = create_keys(CryptoConfig())
    (tmp_path / "secret.ctx").write_bytes(keys.secret_context)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, tenseal as ts\n"
        f"ctx = ts.context_from(open({str(tmp_path / 'secret.ctx')!r}, 'rb').read())\n"
        "print('ready', flush=True)\ntime.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        in_memory = [n for n in leakscan.secret_key_needles(keys.secret_context) if len(n.pattern) == 64]

        findings = leakscan.scan_process(holder.pid, in_memory)
    finally:
        holder.kill()
        holder.wait()

    assert in_memory and "secret-key" in {f.kind for f in findings}
