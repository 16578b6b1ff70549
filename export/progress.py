"""What the export tooling tells the user while it works: log lines and progress bars, on stderr."""

from __future__ import annotations

import sys
from pathlib import Path


def memory() -> str:
    """' (RSS x GB, peak y GB)' from /proc on Linux, else ''."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return f" (RSS {int(status['VmRSS'].split()[0]) / 1e6:.1f} GB, peak {int(status['VmHWM'].split()[0]) / 1e6:.1f} GB)"
    except (OSError, KeyError, ValueError):
        return ""


def log(msg: str) -> None:
    """One line on stderr; a numbered stage (``[2/6] ...``) also gets the process's memory."""
    if msg.startswith("["):
        msg += memory()
    print(msg, file=sys.stderr, flush=True)


def progress(items, desc: str = "reference", unit: str = "trace", **kw):
    """A tqdm progress bar on stderr over ``items``."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, file=sys.stderr, **kw)


def quiet(msg: str) -> None:
    """A ``log`` that says nothing (tests, benchmarks)."""
