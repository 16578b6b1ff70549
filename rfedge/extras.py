"""Optional dependencies: imported only where used, with the install command when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError


def require(module: str, extra: str, what: str = "this") -> ModuleType:
    """``import module`` or raise :class:`MissingExtraError`: ``pip install 'rfedge[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or module
        raise MissingExtraError(
            f"{what} needs the {extra} extras ({missing} is missing): pip install 'rfedge[{extra}]'") from None
