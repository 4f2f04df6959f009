"""fedrec.wire.payload: the wire format of updates, aggregates and global models, validated on receipt."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch

from fedrec.core.config import CryptoConfig
from fedrec.core.errors import PayloadError
from fedrec.core.state import TensorSpec, layout_size
from fedrec.crypto.ckks import CKKSCodec, create_keys
from fedrec.crypto.updates import (
    LocalUpdate,
    aggregate_updates,
    decode_global,
    encode_global,
    encrypt_update,
)
from fedrec.wire.payload import MAGIC, EncryptedUpdate

CRYPTO = CryptoConfig()  # 4096: 2048 slots of two values each
SLOTS = 2048


@pytest.fixture(scope="module")
def keys():
    return create_keys(CRYPTO)


@pytest.fixture(scope="module")
def foreign_keys():
    return create_keys(CRYPTO)


def _update(silo: str = "a", round_: int = 1, n: int = 10) -> LocalUpdate:
    delta = {"w": torch.linspace(-1, 1, 3000).reshape(1000, 3), "b": torch.tensor([0.25])}
    return LocalUpdate(silo_id=silo, round=round_, n_samples=n, delta=delta)


def _payload(keys, **kw) -> EncryptedUpdate:
    update = _update(**kw)
    return encrypt_update(update, CKKSCodec(keys.secret_context, SLOTS, public_context=keys.public_context),
                          CRYPTO, update.n_samples)


def test_round_trip(keys):
    # Prepare
    payload = _payload(keys, silo="north", round_=4, n=77)

    # Execute
    data = payload.to_bytes()
    back = EncryptedUpdate.from_bytes(data, expect_kind="update")

    # Assert
    assert back == payload
    assert data.startswith(MAGIC)
    assert back.layout == (TensorSpec("w", (1000, 3)), TensorSpec("b", (1,)))
    assert layout_size(back.layout) == 3001
    assert len(back.chunks) == 1  # 3001 values, two per slot, in one 2048-slot ciphertext
    assert (back.pack, back.total_samples) == (2, 77)
    assert back.nbytes == sum(len(c) for c in payload.chunks) < len(data)
    (hlen,) = struct.unpack(">Q", data[len(MAGIC):len(MAGIC) + 8])
    header = json.loads(data[len(MAGIC) + 8:len(MAGIC) + 8 + hlen])
    assert header["chunks"][0] == [len(payload.chunks[0]), hashlib.sha256(payload.chunks[0]).hexdigest()]
    assert header["round"] == 4 and header["n_samples"] == 77 and header["silo_id"] == "north"


def test_truncated_bytes_refused(keys):
    data = _payload(keys).to_bytes()

    with pytest.raises(PayloadError, match="truncated or padded"):
        EncryptedUpdate.from_bytes(data[:-100], source="round-0001/updates/a.bin")
    with pytest.raises(PayloadError, match="truncated or padded"):
        EncryptedUpdate.from_bytes(data + b"\x00")
    with pytest.raises(PayloadError):
        EncryptedUpdate.from_bytes(data[:len(MAGIC) + 20])  # cut inside the header


def test_flipped_byte_in_chunk_refused(keys):
    data = bytearray(_payload(keys).to_bytes())
    data[-500] ^= 0x01  # inside the last chunk

    with pytest.raises(PayloadError, match="chunk 0 fails its checksum"):
        EncryptedUpdate.from_bytes(bytes(data), source="x.bin")


def test_bad_magic_refused(keys):
    data = _payload(keys).to_bytes()

    with pytest.raises(PayloadError, match="bad magic"):
        EncryptedUpdate.from_bytes(b"FEDREC2\n" + data[len(MAGIC):])
    with pytest.raises(PayloadError, match="bad magic"):
        EncryptedUpdate.from_bytes(b"PAR1 not ours")


def test_wrong_kind_refused(keys):
    data = _payload(keys).to_bytes()

    with pytest.raises(PayloadError, match="expected a 'aggregate' payload, got 'update'"):
        EncryptedUpdate.from_bytes(data, expect_kind="aggregate")


def test_foreign_context_refused_by_aggregator(keys, foreign_keys):
    # Prepare: silo b encrypted under another federation's context
    ours = _payload(keys, silo="a")
    foreign = _payload(foreign_keys, silo="b")
    coordinator = CKKSCodec(keys.public_context, SLOTS)
    assert foreign.context_id != ours.context_id

    # Execute / Assert
    with pytest.raises(PayloadError, match=r"silo 'b' refused: encrypted under foreign context") as info:
        aggregate_updates([ours, foreign], coordinator, 1, CRYPTO)
    assert foreign.context_id in str(info.value) and coordinator.context_id in str(info.value)


def test_mismatched_round_refused(keys):
    coordinator = CKKSCodec(keys.public_context, SLOTS)
    late = EncryptedUpdate.from_bytes(_payload(keys, silo="c", round_=1).to_bytes())

    with pytest.raises(PayloadError, match=r"silo 'c' refused: round 1 \(expected 2\)"):
        aggregate_updates([_payload(keys, silo="a", round_=2), late], coordinator, 2, CRYPTO)


def test_global_payload_round_trip():
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([-1.5])}

    back = decode_global(EncryptedUpdate.from_bytes(encode_global(state, 5).to_bytes(), expect_kind="global"))

    assert set(back) == {"w", "b"}
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["b"], state["b"])


def test_decode_global_refuses_update(keys):
    with pytest.raises(PayloadError, match="not a global-model payload"):
        decode_global(_payload(keys))


def test_corrupt_header_refused():
    header = b"{not json"
    with pytest.raises(PayloadError, match="corrupt header"):
        EncryptedUpdate.from_bytes(MAGIC + struct.pack(">Q", len(header)) + header)
