"""What every command shares: typed errors as one line and an exit code, optional extras."""

from __future__ import annotations

import functools
import os
import sys

import click

from ..errors import RfedgeError
from ..extras import require
from ..output import Terminated, raise_on_termination


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _fail(err: RfedgeError) -> None:
    try:
        sys.stdout.flush()
    except OSError:
        _silence_stdout()
    click.echo(f"rfedge: error: {err}", err=True)
    sys.exit(err.exit_code)


def reports_errors(fn):
    """Typed errors -> one line and their exit code; a closed stdout -> 141 (``| head``), as Unix
    tools do; SIGTERM/SIGHUP -> 128 + signal after temporary files are removed."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        raise_on_termination()
        try:
            return fn(*args, **kwargs)
        except RfedgeError as e:
            _fail(e)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(141)
        except Terminated as t:
            _silence_stdout()
            sys.exit(128 + t.signum)
    return wrapper


def export_extra(module: str):
    """A module of the export tooling (rfedge_export), or how to install it."""
    return require(f"rfedge_export.{module}", "export", "this command")


def scorer_options(fn):
    """The options that choose and tune the scorer (``rfedge score``, ``select``, ``serve``)."""
    from ..constants import DEFAULT_ALPHA, DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TOKENS, DEVICES
    from ..scorer import DEFAULT_CACHE_BYTES

    options = [
        click.option("--model", "model", default=None, help="Model directory from 'rfedge export' (default: "
                     "$RFEDGE_MODEL, then the newest export in $RFEDGE_HOME, then the bundled demo)."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="auto uses CUDA when onnxruntime-gpu sees a GPU."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True),
        click.option("--batch-tokens", type=click.IntRange(min=1), default=DEFAULT_BATCH_TOKENS, show_default=True,
                     help="Padded tokens per batch at most (bounds memory); a single trace always fits."),
        click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True,
                     help="score = mean step reward + alpha x trajectory reward."),
        click.option("--threads", type=click.IntRange(min=0), default=0, help="Intra-op threads (0: all cores)."),
        click.option("--cache-mb", type=click.IntRange(min=0), default=DEFAULT_CACHE_BYTES >> 20, show_default=True,
                     help="Prefix cache for keys and values of traces already scored (traces sharing a prompt "
                          "or a partial trace run only what is new); 0 turns it off."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def input_options(fn):
    """How trace files are read (``rfedge score``, ``select``)."""
    from ..sources import DEFAULT_MAX_RECORD_BYTES, FORMATS

    fn = click.option("--max-record-mb", type=click.IntRange(min=1), default=DEFAULT_MAX_RECORD_BYTES >> 20,
                      show_default=True, help="A record (JSONL line) larger than this is reported, not read.")(fn)
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                        help="Input format (auto: by suffix; stdin: JSONL, or one JSON document).")(fn)


def load_scorer(model, device, batch_size, batch_tokens, alpha, threads, cache_mb):
    """The scorer the options describe; says on stderr which model and device it uses."""
    from ..home import resolve_model
    from ..scorer import Scorer

    choice = resolve_model(model)
    scorer = Scorer.load(choice.path, device=device, alpha=alpha, batch_size=batch_size, batch_tokens=batch_tokens,
                         threads=threads, cache_bytes=cache_mb << 20)
    click.echo(f"rfedge: model {scorer.manifest.describe()} [{choice.reason}], device {scorer.device}", err=True)
    if scorer.manifest.notice:
        click.echo(f"rfedge: note: {scorer.manifest.notice}", err=True)
    return scorer
