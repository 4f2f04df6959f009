"""Each cheaper-encryption option of issue #11 measured on one silo's ML-100K update (114,465 shared parameters).

For each CKKS configuration, from the former default to the current one, one option changed at a time: bytes of
the update's ciphertexts against fp32, seconds to encrypt it (one silo), to add 11 of them (the coordinator) and to
decrypt the sum (the decryptor), and whether the decoded mean is exactly the plaintext path's (HE == plaintext).
The encoding (share of the mean on the 2^-17 grid, lanes, masks) is fedrec's own, via fedrec.crypto.updates.
Then the worker processes (crypto.workers) on a large update (--large shared parameters, 4 silos): 1 against
--workers processes.

    .venv/bin/python bench/he_options.py [--silos 11] [--repeats 3] [--large 4e6] [--workers 2]
                                         [--out results/he_options.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedrec.core.config import CryptoConfig
from fedrec.core.state import flatten_state
from fedrec.crypto.ckks import (
    PARALLEL_MIN_CHUNKS,
    CKKSCodec,
    KeyMaterial,
    PlainCodec,
    create_keys,
)
from fedrec.crypto.updates import (
    LocalUpdate,
    aggregate_updates,
    decrypt_aggregate,
    encrypt_update,
)

LENGTH = 114_465  # NeuMF's shared parameters on ML-100K
FORMER = CryptoConfig(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 60), global_scale_bits=50,
                      quantization_bits=17, lane_bits=32, pack=1, slot_values=1, seeded=False)
TWO_LANES = CryptoConfig(slot_values=1, seeded=False)
OPTIONS = [  # (name, config, symmetric encryption)
    ("former: N=8192, public-key, 1 value/slot", FORMER, False),
    ("+ symmetric encryption", FORMER, True),
    ("+ smallest 128-bit ring N=4096, [60, 49]", FORMER.model_copy(update={"poly_modulus_degree": 4096,
                                                                         "coeff_mod_bit_sizes": (60, 49)}), True),
    ("+ 2 lanes per value (19-bit lanes)", TWO_LANES, True),
    ("+ seeded ciphertexts", TWO_LANES.model_copy(update={"seeded": True}), True),
    ("+ 2 values per slot (complex encoding): the default", CryptoConfig(), True),
]


def public_key_keys(cfg: CryptoConfig) -> KeyMaterial:
    """The former key material: public-key encryption (the public context carries the public key)."""
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=cfg.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(cfg.coeff_mod_bit_sizes))
    ctx.global_scale = 2 ** cfg.global_scale_bits
    secret = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    public = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return KeyMaterial(secret_context=secret, public_context=public)


def best_of(repeats: int, fn):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def updates_of(n_silos: int, length: int, seed: int = 0) -> list[LocalUpdate]:
    rng = np.random.default_rng(seed)
    return [LocalUpdate(f"s{i}", 1, int(rng.integers(2_000, 20_000)),
                        {"w": torch.from_numpy(rng.normal(0, 0.01, length).astype(np.float32))})
            for i in range(n_silos)]


def measure(cfg: CryptoConfig, symmetric: bool, updates: list[LocalUpdate], repeats: int, workers: int = 1) -> dict:
    keys = create_keys(cfg) if symmetric else public_key_keys(cfg)
    silo = CKKSCodec.of(cfg, keys.secret_context, public_context=keys.public_context, workers=workers)
    coordinator = CKKSCodec.of(cfg, keys.public_context)  # additions stay in one process (cheaper than shipping)
    if workers > 1:  # start the pool outside the timings (once per run in a federation)
        silo.decrypt(coordinator.add([silo.encrypt(np.zeros(silo.per_ciphertext * PARALLEL_MIN_CHUNKS))]), 1)
    total = sum(u.n_samples for u in updates)
    encrypt_s, first = best_of(repeats, lambda: encrypt_update(updates[0], silo, cfg, total))
    sent = [first] + [encrypt_update(u, silo, cfg, total) for u in updates[1:]]
    add_s, aggregate = best_of(repeats, lambda: aggregate_updates(sent, coordinator, 1, cfg))
    decrypt_s, result = best_of(repeats, lambda: decrypt_aggregate(aggregate, silo))
    plain = decrypt_aggregate(aggregate_updates([encrypt_update(u, PlainCodec(), cfg, total) for u in updates],
                                                PlainCodec(), 1, cfg), PlainCodec())
    he_mean, plain_mean = flatten_state(result.mean_delta), flatten_state(plain.mean_delta)
    silo.close()
    length = sum(t.numel() for t in updates[0].delta.values())
    return {"bytes_per_silo": first.nbytes, "x_fp32": first.nbytes / (4 * length), "ciphertexts": len(first.chunks),
            "public_context_bytes": len(keys.public_context), "secret_context_bytes": len(keys.secret_context),
            "encrypt_s_per_silo": encrypt_s, "add_s": add_s, "decrypt_s": decrypt_s,
            "he_equals_plaintext": bool(np.array_equal(he_mean, plain_mean))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--silos", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large", type=float, default=4e6, help="shared parameters of the worker-process comparison")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/he_options.json"))
    args = ap.parse_args()
    updates = updates_of(args.silos, LENGTH)
    rows = []
    for name, cfg, symmetric in OPTIONS:
        row = {"option": name, "symmetric": symmetric, **measure(cfg, symmetric, updates, args.repeats)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    large = updates_of(4, int(args.large))
    parallel = []
    for workers in (1, args.workers):
        row = {"shared_params": int(args.large), "silos": 4, "workers": workers,
               **measure(CryptoConfig(), True, large, 1, workers)}
        parallel.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"silos": args.silos, "length": LENGTH, "measured": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows, "workers": parallel}, indent=2))
    print("| option | bytes / silo | × fp32 | encrypt (s, one silo) | add 11 (s) | decrypt (s) | HE == plaintext |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['option']} | {r['bytes_per_silo'] / 1e6:.2f} MB | {r['x_fp32']:.2f} | {r['encrypt_s_per_silo']:.3f}"
              f" | {r['add_s']:.3f} | {r['decrypt_s']:.3f} | {r['he_equals_plaintext']} |")
    print(f"\n{int(args.large):,} shared parameters, 4 silos: | workers | encrypt (one silo) | add 4 | decrypt |")
    for r in parallel:
        print(f"| {r['workers']} | {r['encrypt_s_per_silo']:.2f} s | {r['add_s']:.2f} s | {r['decrypt_s']:.2f} s |")


if __name__ == "__main__":
    main()
