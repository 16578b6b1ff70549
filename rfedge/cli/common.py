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
