"""What every party checks before it serves or starts a run (`fedrec silo serve`, `fedrec coordinate`): fail fast,
with a named error that says what is missing and which command makes it, instead of failing when a run comes."""

from __future__ import annotations

from pathlib import Path

import fsspec

from fedrec.core.config import Config
from fedrec.core.errors import ConfigError
from fedrec.wire.trust import Roster


class SetupError(ConfigError):
    """A party's set-up is incomplete: what is missing, where, and the command that provides it."""


def catalogue_file(cfg: Config) -> Path:
    return Path(cfg.data.work_dir) / "catalogue" / "items.parquet"


def check_catalogue(cfg: Config) -> str:
    path = catalogue_file(cfg)
    if not path.is_file():
        raise SetupError(f"the public item catalogue {path} is missing: every party needs the same one. Copy "
                         f"data/catalogue/ from the party that prepared the data (or run `fedrec prepare` with the "
                         f"same params.yaml)")
    return f"catalogue {path}"


def check_roster(cfg: Config, parties: list[str]) -> str:
    """The pinned roster, when configured, names every one of ``parties``."""
    if not cfg.federation.roster:
        return "roster: none pinned (silo keys are learnt on first use)"
    roster = Roster.load(cfg.federation.roster)
    missing = [p for p in parties if p not in roster]
    if missing:
        raise SetupError(f"federation.roster {cfg.federation.roster} lacks {missing}: add their public identities "
                         "(`fedrec silo identity` / `fedrec identity`, then `fedrec roster ... -o roster.json`)")
    return f"roster {cfg.federation.roster}: {len(roster.parties)} parties"


def check_exchange(cfg: Config) -> str:
    """The exchange can be listed (a bucket that exists, credentials that work, a directory that can be made)."""
    url = cfg.federation.exchange_url
    try:
        fs, root = fsspec.core.url_to_fs(url)
        if fs.protocol in ("file", "local") or "file" in fs.protocol:
            fs.makedirs(root, exist_ok=True)
        fs.ls(root, detail=False)
    except FileNotFoundError:
        bucket = root.strip("/").split("/")[0]
        if not fs.exists(bucket):
            raise SetupError(f"federation.exchange_url {url}: {bucket} does not exist (create the bucket first)") \
                from None
        return f"exchange {url} (empty)"
    except ImportError as exc:
        raise SetupError(f"federation.exchange_url {url}: {exc} (pip install -e '.[s3]' for s3://)") from exc
    except Exception as exc:  # noqa: BLE001 - any store error: credentials, endpoint, permissions
        raise SetupError(f"federation.exchange_url {url} cannot be listed: {type(exc).__name__}: {exc}") from exc
    return f"exchange {url}"
