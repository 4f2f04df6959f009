"""`fedrec demo-db` (the demo silos written into per-silo SQL databases), `fedrec example-data` (an own-data example
in the data.source: files layout) and `fedrec snapshot` (every database silo's rows into its Parquet data: the DVC
stage); registered on fedrec.cli.app's app."""

from __future__ import annotations

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
    """Add the data-source commands to ``app``."""

    @app.command("demo-db")
    def demo_db(out_dir: Path = typer.Option(Path("data/db"), "--out-dir",
                                             help="one SQLite file per silo: <out-dir>/<silo>.sqlite"),
                params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
        """Write each demo silo's interactions into <out-dir>/<silo>.sqlite and print the silo.source to use.

        Table silo.table, columns named by the silo.*_column mapping. A relative --out-dir stays relative in the
        printed source: run `fedrec run` from the same directory."""
        from fedrec.silo.data import demo_source, write_demo_databases

        with user_errors():
            cfg = command_config(params, set_, data=True)
            rows = write_demo_databases(cfg, out_dir)
        source = demo_source(out_dir)
        plain = dict(soft_wrap=True, markup=False, highlight=False)  # paths verbatim, never wrapped
        err.print(f"wrote {len(rows)} silos into {out_dir}/<silo>.sqlite (table {cfg.silo.table}): "
                  + ", ".join(f"{s} ({n} rows)" for s, n in rows.items()), **plain)
        err.print("to train with each silo reading its own database (or set silo.source in params.yaml):", **plain)
        err.print(f"  fedrec run -S silo.source={source}", **plain)
        err.print(f"each run snapshots the rows into {Path(cfg.data.work_dir) / 'snapshots'}/<silo>/interactions.parquet",
                  **plain)
        typer.echo(source)

    @app.command("example-data")
    def example_data(out_dir: Path = typer.Argument(Path("."), help="where to write (created when missing)"),
                     silos: int = typer.Option(3, "--silos", min=2, help="silos shop-a, shop-b, ..."),
                     force: bool = typer.Option(False, "--force", help="overwrite an existing params.yaml")) -> None:
        """Write a small own-data example: catalogue.csv, interactions/<silo>.csv and a params.yaml mapping them
        (data.source: files). Then, in that directory: `fedrec run`, `fedrec recommend --silo shop-a --user ...`."""
        from fedrec.core.data.files import write_example

        if (out_dir / "params.yaml").exists() and not force:
            err.print(f"{out_dir / 'params.yaml'} exists: not overwritten (--force to replace it)")
            raise typer.Exit(2)
        with user_errors():
            rows = write_example(out_dir, n_silos=silos)
        plain = dict(soft_wrap=True, markup=False, highlight=False)
        err.print(f"wrote {out_dir}/catalogue.csv, params.yaml and interactions/<silo>.csv: "
                  + ", ".join(f"{s} ({n} rows)" for s, n in rows.items()), **plain)
        err.print(f"next: cd {out_dir} && fedrec run", **plain)

    @app.command("snapshot")
    def snapshot_cmd(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
                     silo: Optional[str] = typer.Option(None, "--silo", help="only this silo (on its own machine)")
                     ) -> None:
        """Snapshot each database silo's rows (silo.source) into data/snapshots/<silo>/interactions.parquet, which
        DVC versions (the `snapshot` stage); nothing to do without silo.source. Every run also snapshots anew."""
        from fedrec.silo import data as pipeline

        with user_errors():
            silos = pipeline.snapshot_all(command_config(params, set_, data=True), silo)
        err.print(f"snapshots of {len(silos)} database silo(s)" + (f": {', '.join(silos)}" if silos else
                                                                    " (silo.source is not set)"))
