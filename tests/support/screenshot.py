"""Headless-Chromium screenshots of the UIs' pages (proof that they render, saved under reports/).

Debian's `chromium` (apt-get install chromium), run with --headless --no-sandbox --disable-gpu
--disable-background-networking and a virtual-time budget: the Prefect and MLflow pages are single-page apps that
render after their API calls."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from fedrec.orchestration.ops import OpsError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str | None:
    """The first headless-capable Chromium on PATH, or None."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = browser()
    if exe is None:
        raise OpsError("chromium is not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="fedrec-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--hide-scrollbars", "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the browser's renderer and zygote processes too
            proc.communicate()
            raise OpsError(f"chromium did not finish within {timeout:.0f}s") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def screenshot(url: str, out: Path, *, width: int = 1400, height: int = 900, budget_ms: int = 15000,
               timeout: float = 90.0) -> Path:
    """A PNG of ``url`` as a ``width`` x ``height`` window shows it once ``budget_ms`` of virtual time passed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    done = _chromium([f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
                      f"--screenshot={out.resolve()}", url], timeout)
    if not out.exists():
        raise OpsError(f"chromium wrote no screenshot of {url} (exit {done.returncode}): "
                       f"{done.stderr.decode(errors='replace')[-500:]}")
    return out


def rendered_dom(url: str, *, budget_ms: int = 15000, timeout: float = 90.0) -> str:
    """The page's DOM after its scripts ran for ``budget_ms`` of virtual time."""
    done = _chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    return done.stdout.decode(errors="replace")


def colour_stats(png: Path) -> tuple[int, float]:
    """(distinct colours, share of the most common colour): a page that did not render is one flat colour."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=rgb.width * rgb.height)
    return len(colours), max(count for count, _ in colours) / (rgb.width * rgb.height)
