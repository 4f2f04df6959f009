"""Parties as different Unix users on one machine (the OS-isolation test, README "Parties isolated by the operating
system"): system users made on demand, each party's process started under its own uid with the exchange group as its
only supplementary group and umask 007 (the exchange is group-shared, nothing is world-readable)."""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import subprocess
import sys
from pathlib import Path

EXCHANGE_GROUP = "fedrec-x"


def can_switch_users() -> bool:
    return os.geteuid() == 0 and all(Path(t).exists() for t in ("/usr/sbin/useradd", "/usr/bin/setpriv"))


def ensure_user(name: str) -> int:
    """The uid of system user ``name`` (made when missing: no home, no login shell)."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group",
                        name], check=True)
        return pwd.getpwnam(name).pw_uid


def ensure_group(name: str = EXCHANGE_GROUP) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True)
        return grp.getgrnam(name).gr_gid


def _hidden_interpreter_root() -> Path | None:
    """An ancestor of this Python's real path that other users cannot traverse (e.g. a pyenv under a 0700 /root)."""
    real = Path(os.path.realpath(sys.executable))
    for parent in reversed(real.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


def as_user(user: str, argv: list[str]) -> list[str]:
    """``argv`` run as ``user`` (its own uid and gid, the exchange group, no capabilities, umask 007). When this
    Python lives under a directory other users cannot traverse, the command runs in a private mount namespace where
    only the interpreter's tree is made reachable (a tmpfs over that directory, the tree bound back): nothing else of
    it becomes visible."""
    pw = pwd.getpwnam(user)
    inner = (f"umask 007; exec setpriv --reuid={pw.pw_uid} --regid={pw.pw_gid} --groups={ensure_group()} "
             f"--inh-caps=-all -- {shlex.join(argv)}")
    hidden = _hidden_interpreter_root()
    if hidden is None:
        return ["sh", "-c", inner]
    real = Path(os.path.realpath(sys.executable))
    tree = hidden / real.relative_to(hidden).parts[0]  # e.g. /root/.pyenv
    stash = f"/tmp/.fedrec-interp-{os.getpid()}"
    dance = (f"mkdir -p {stash} && mount --bind {shlex.quote(str(tree))} {stash} && "
             f"mount -t tmpfs -o mode=0711 fedrec-hide {shlex.quote(str(hidden))} && "
             f"mkdir -p {shlex.quote(str(tree))} && mount --bind {stash} {shlex.quote(str(tree))} && ")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", dance + inner]


def chown_tree(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
    os.chown(path, pw.pw_uid, pw.pw_gid)
