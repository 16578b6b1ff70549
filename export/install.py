"""Putting a validated export into place at ``--out``, deleting nothing the user did not ask for.

``--out`` may be a new path, an empty directory, or a previous export: a directory whose
``rfedge.json`` lists every other file in it. Only then is it replaced, and only the previous
export's own files (the ones its manifest lists, and the manifest) are deleted. A directory with
anything else in it is refused before any work starts and checked again just before the swap.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from rfedge.errors import UsageError
from rfedge.manifest import MANIFEST_NAME, is_plain_name


def _own_files(out: Path) -> set[str]:
    """The names a previous export at ``out`` wrote: its manifest's files, and the manifest."""
    try:
        data = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = data["files"]
        names = set(files) if isinstance(files, dict) else set()
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise UsageError(f"{out}: its {MANIFEST_NAME} cannot be read, so rfedge cannot tell which files are its "
                         "own; choose another --out or remove the directory yourself") from None
    return {n for n in names if isinstance(n, str) and is_plain_name(n)} | {MANIFEST_NAME}


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is not new, empty, or a previous export holding only its own files."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"{out}: exists and is not a directory; choose another --out")
    if not out.exists():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if MANIFEST_NAME not in entries:
        raise UsageError(f"{out}: exists and is not an rfedge export; choose another --out")
    own = _own_files(out)
    foreign = [n for n in entries if n not in own or not (out / n).is_file() or (out / n).is_symlink()]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UsageError(f"{out}: holds files its previous export did not write ({shown}); rfedge only "
                         "replaces an export's own files: move them away or choose another --out")


def install(built: Path, out: Path) -> str | None:
    """Move the finished directory ``built`` to ``out``; returns a notice if anything was left behind."""
    check_out(out)
    if not out.exists() or not any(out.iterdir()):
        os.replace(built, out)  # rename(2) also replaces an empty directory
        return None
    own = _own_files(out)
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    os.replace(out, old)
    os.replace(built, out)
    for name in own:
        path = old / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    try:
        old.rmdir()
    except OSError:
        return (f"files that appeared in {out} during the export were kept in {old} "
                "(rfedge deletes only a previous export's own files)")
    return None
