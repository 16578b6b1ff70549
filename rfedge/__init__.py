"""rfedge: a lightweight edge scorer for ReasonFlux-PRM process reward models.

The runtime needs numpy, onnxruntime, tokenizers and click only; it never imports torch.
"""

from .errors import (ModelFilesError, RfedgeError, TraceFormatError, UsageError,  # noqa: F401
                     ValidationError)
from .scorer import ScoreResult, Scorer, StepResult  # noqa: F401
from .traces import Trace, parse_trace  # noqa: F401

__version__ = "0.1.0"
__all__ = ["Scorer", "ScoreResult", "StepResult", "Trace", "parse_trace", "RfedgeError",
           "TraceFormatError", "ModelFilesError", "UsageError", "ValidationError", "__version__"]
