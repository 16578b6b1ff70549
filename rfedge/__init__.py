"""rfedge: a lightweight edge scorer for ReasonFlux-PRM process reward models.

The runtime needs numpy, onnxruntime, tokenizers and click only; it never imports torch.
"""

from importlib import metadata as _metadata

from .errors import (MissingExtraError, ModelFilesError, OutputError, RfedgeError,  # noqa: F401
                     RuntimeFailure, TraceFormatError, UsageError, ValidationError)
from .scorer import ScoreResult, Scorer, StepResult  # noqa: F401
from .stream import ScoringState  # noqa: F401
from .traces import Record, Trace, parse_trace  # noqa: F401

try:
    __version__ = _metadata.version("rfedge")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Scorer", "ScoreResult", "StepResult", "ScoringState", "Trace", "Record", "parse_trace",
           "RfedgeError", "TraceFormatError", "ModelFilesError", "UsageError", "ValidationError",
           "MissingExtraError", "OutputError", "RuntimeFailure", "__version__"]
