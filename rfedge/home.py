"""Where models live: ``--model``, ``$RFEDGE_MODEL``, the newest export in ``$RFEDGE_HOME``, the bundled demo."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .constants import MANIFEST_NAME

BUNDLED_DIR = Path(__file__).parent / "models" / "demo-arith"


def rfedge_home() -> Path:
    return Path(os.environ.get("RFEDGE_HOME") or Path.home() / ".cache" / "rfedge").expanduser()


def models_dir() -> Path:
    return rfedge_home() / "models"


def default_export_dir(source: str, precision: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", source.strip("/")).strip("-").lower() or "model"
    return models_dir() / f"{slug}-{precision}"


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    reason: str  # how it was chosen, for the stderr notice


def newest_export() -> Path | None:
    root = models_dir()
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_NAME).is_file()]
    return max(found, key=lambda p: (p / MANIFEST_NAME).stat().st_mtime, default=None)


def resolve_model(option: str | None) -> ModelChoice:
    """Pick the model directory: option, then $RFEDGE_MODEL, then $RFEDGE_HOME, then the bundled demo."""
    if option:
        return ModelChoice(Path(option).expanduser(), "--model")
    env = os.environ.get("RFEDGE_MODEL")
    if env:
        return ModelChoice(Path(env).expanduser(), "$RFEDGE_MODEL")
    newest = newest_export()
    if newest is not None:
        return ModelChoice(newest, f"newest export in {models_dir()}")
    if (BUNDLED_DIR / MANIFEST_NAME).is_file():
        return ModelChoice(BUNDLED_DIR, "bundled demo model")
    raise UsageError(
        f"no model found: pass --model DIR, set $RFEDGE_MODEL, or run 'rfedge export' "
        f"(exports go to {models_dir()})")
