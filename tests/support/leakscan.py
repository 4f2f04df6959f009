"""Look for what must never leave a silo in the places a federation run writes to.

After a run, the exchange (everything outside sealed blobs is readable by the coordinator and anyone with
read access to the bucket), the MLflow store (database and artifacts), Prefect's database and result
storage (logs, artifacts, parameters, results, error messages) and the hosts' logs are searched for:

- ``secret-key``: windows of the run's serialized CKKS secret key;
- ``user-embedding``: a silo's trained user vectors (float32 and float64 bytes, and as text);
- ``user-id`` / ``interaction``: raw user ids and interaction timestamps (as text, on digit boundaries).

``scan`` returns each :class:`Finding` (kind, file, offset); an empty list means nothing was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class Needle:
    kind: str
    pattern: bytes
    #: text needles match only after a non-digit (an id 123 is not found inside 91234) and, when shorter than
    #: nine characters, before one (databases pack fields together: a long id may be followed by a uuid's digits)
    numeric: bool = False


@dataclass(frozen=True)
class Finding:
    kind: str
    path: str
    offset: int

    def __str__(self) -> str:
        return f"{self.kind} in {self.path} at byte {self.offset}"


def secret_key_needles(secret_context: bytes, window: int = 48, count: int = 16) -> list[Needle]:
    """Windows of the secret key's serialization (the part of a secret context a public one lacks), as raw
    bytes, hex and base64 (of the whole context, at each of the three alignments)."""
    import base64

    import tenseal as ts

    ctx = ts.context_from(secret_context)
    opts = dict(save_public_key=False, save_galois_keys=False, save_relin_keys=False)
    with_key, without = ctx.serialize(save_secret_key=True, **opts), ctx.serialize(save_secret_key=False, **opts)
    start = next((i for i, (a, b) in enumerate(zip(with_key, without)) if a != b), min(len(with_key), len(without)))
    end = len(with_key) - next((i for i, (a, b) in enumerate(zip(reversed(with_key), reversed(without))) if a != b), 0)
    secret = with_key[start:end]
    if len(secret) < window:
        raise ValueError("could not isolate the secret key in the serialized context")
    step = max((len(secret) - window) // max(count - 1, 1), 1)
    windows = [secret[i:i + window] for i in range(0, len(secret) - window + 1, step)][:count]
    needles = [Needle("secret-key", w) for w in windows] + [Needle("secret-key", w.hex().encode()) for w in windows]
    # in memory, SEAL keeps the key as uint64 coefficients (NTT form): windows of 8 of them
    key = ctx.secret_key().data.data()
    n = key.coeff_count()
    for start in range(0, n - 8, max(n // 8, 8)):
        needles.append(Needle("secret-key", np.array([key.data(i) for i in range(start, start + 8)],
                                                     dtype="<u8").tobytes()))
    at = secret_context.find(secret[:window])  # where the key sits in the context as serialized
    for shift in range(3):
        encoded = base64.b64encode(secret_context[shift:])
        if at >= 0:
            middle = (at - shift) * 4 // 3 + 8
            needles.append(Needle("secret-key", encoded[middle:middle + window]))
    return needles


def public_context_needles(public_context: bytes) -> list[Needle]:
    """The key id a public context names (fedrec.crypto.ckks.PUBLIC_TAG) and its fingerprint (the run's context id, also
    in the run summary): a control showing a memory scan does see what a process holds that loaded the run's public
    context (symmetric CKKS: there is no public key whose SEAL objects could serve)."""
    from fedrec.crypto.ckks import PUBLIC_TAG, context_fingerprint

    if not public_context.startswith(PUBLIC_TAG):
        raise ValueError("not a fedrec public CKKS context")
    return [Needle("public-context", public_context[len(PUBLIC_TAG):len(PUBLIC_TAG) + 32]),
            Needle("public-context", context_fingerprint(public_context).encode())]


def scan_process(pid: int, needles: list[Needle]) -> list[Finding]:
    """Every needle found in the readable memory of process ``pid`` (its own user's, or a child's)."""
    findings = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            findings += [Finding(f.kind, f"pid {pid} {fields[0]}", f.offset) for f in scan_bytes(data, needles)]
    return findings


def embedding_needles(rows: Iterable[np.ndarray]) -> list[Needle]:
    needles = []
    for row in rows:
        row = np.asarray(row)
        needles += [Needle("user-embedding", row.astype("<f4").tobytes()),
                    Needle("user-embedding", row.astype("<f8").tobytes())]
        for value in row.astype(np.float32)[:2]:
            for text in {str(value), repr(float(value))}:  # as numpy prints a float32, and as a Python float
                if len(text.lstrip("-0.")) >= 7:  # enough digits to be this value and not any number
                    needles.append(Needle("user-embedding", text.encode(), numeric=True))
    return needles


def number_needles(kind: str, values: Iterable[int]) -> list[Needle]:
    return [Needle(kind, str(int(v)).encode(), numeric=True) for v in sorted(set(int(v) for v in values))]


def _numeric_regex(needles: list[Needle]) -> re.Pattern | None:
    if not needles:
        return None
    ordered = sorted(needles, key=lambda n: -len(n.pattern))
    long = b"|".join(re.escape(n.pattern) for n in ordered if len(n.pattern) >= 9) or b"(?!)"
    short = b"|".join(re.escape(n.pattern) for n in ordered if len(n.pattern) < 9) or b"(?!)"
    return re.compile(rb"(?<![0-9.])(" + long + rb"|(?:" + short + rb")(?![0-9]))")


def scan_bytes(data: bytes, needles: list[Needle], path: str = "<bytes>") -> list[Finding]:
    findings = []
    for needle in (n for n in needles if not n.numeric):
        at = data.find(needle.pattern)
        if at >= 0:
            findings.append(Finding(needle.kind, path, at))
    numeric = [n for n in needles if n.numeric]
    if (regex := _numeric_regex(numeric)) is not None:
        kinds = {n.pattern: n.kind for n in numeric}
        seen = set()
        for match in regex.finditer(data):
            if match.group(1) not in seen:
                seen.add(match.group(1))
                findings.append(Finding(kinds[match.group(1)], path, match.start()))
    return findings


def files_under(*roots: Path) -> list[Path]:
    out = []
    for root in roots:
        root = Path(root)
        if root.is_file():
            out.append(root)
        elif root.is_dir():
            out += sorted(p for p in root.rglob("*") if p.is_file())
    return out


def scan(paths: Iterable[Path], needles: list[Needle]) -> list[Finding]:
    """Every needle found in every file under ``paths`` (files or directories)."""
    findings = []
    for path in files_under(*paths):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        findings += scan_bytes(data, needles, str(path))
    return findings
