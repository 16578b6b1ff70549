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
    click.echo(printable(f"rfedge: error: {err}"), err=True)
    sys.exit(err.exit_code)


def printable(line: str) -> str:
    """``line`` as stderr can print it: undecodable bytes (surrogate escapes) as ``\\xNN``, and
    what stderr's encoding cannot hold backslash-escaped, never an encoding error."""
    line = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in line)
    enc = getattr(sys.stderr, "encoding", None) or "utf-8"
    return line.encode(enc, "backslashreplace").decode(enc)


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
        click.option("--batch-tokens", type=click.IntRange(min=1), default=None,
                     help="Padded tokens per batch at most, past included (bounds memory); a single trace always "
                          f"fits. Default: {DEFAULT_BATCH_TOKENS['cpu']} on the CPU, {DEFAULT_BATCH_TOKENS['cuda']} "
                          "on CUDA."),
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


def ray_options(fn):
    """Scoring on Ray Data instead of in this process (``rfedge score``, ``select``; the distributed extra)."""
    options = [
        click.option("--ray", "use_ray", is_flag=True, help="Score on Ray Data actors (pip install "
                     "'rfedge[distributed]'); the model directory must be at the same path on every node."),
        click.option("--address", default=None, help="Ray cluster to join (auto, ray://host:10001; default: start "
                     "a local one)."),
        click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Scoring actors (each loads the model once)."),
        click.option("--threads-per-actor", type=click.IntRange(min=1), default=1, show_default=True,
                     help="ONNX Runtime threads (and CPUs reserved) per actor."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def ray_setup(use_ray, address, actors, threads_per_actor, model, device, threads, cache_mb, **_):
    """(Ray options, model directory), after checking the options that do not apply; None without --ray."""
    from ..errors import UsageError

    if not use_ray:
        if address or actors != 1 or threads_per_actor != 1:
            raise UsageError("--address, --actors and --threads-per-actor need --ray")
        return None
    from ..distributed import RayOptions
    from ..home import resolve_model
    from ..manifest import load_manifest
    if device == "cuda":
        raise UsageError("--ray scores on CPU actors; drop --device cuda")
    if threads:
        raise UsageError("--threads does not apply with --ray: each actor runs --threads-per-actor threads")
    choice = resolve_model(model)
    manifest = load_manifest(choice.path)  # verified here first: a bad model is one clear line, not N actor errors
    click.echo(f"rfedge: model {manifest.describe()} [{choice.reason}] on Ray, {actors} actor(s) x "
               f"{threads_per_actor} thread(s)", err=True)
    if "cpu" not in manifest.devices:
        click.echo(f"rfedge: note: this {manifest.precision} graph is built for CUDA; Ray actors score on the CPU, "
                   "several times slower than an int8 export", err=True)
    return RayOptions(address, actors, threads_per_actor), str(choice.path)


def load_scorer(model, device, batch_size, batch_tokens, alpha, threads, cache_mb):
    """The scorer the options describe; says on stderr which model and device it uses."""
    from ..home import resolve_model
    from ..scorer import Scorer

    choice = resolve_model(model)
    scorer = Scorer.load(choice.path, device=device, alpha=alpha, batch_size=batch_size, batch_tokens=batch_tokens,
                         threads=threads, cache_bytes=cache_mb << 20)
    click.echo(f"rfedge: model {scorer.manifest.describe()} [{choice.reason}], device {scorer.device}", err=True)
    for note in ([scorer.manifest.notice] if scorer.manifest.notice else []) + scorer.session.notes:
        click.echo(f"rfedge: note: {note}", err=True)
    return scorer
