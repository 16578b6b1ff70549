"""The runtime's commands: score, generate, models (numpy, onnxruntime, tokenizers, click only)."""

from __future__ import annotations

import json
import sys

import click

from ..constants import DEFAULT_ALPHA, DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TOKENS, DEVICES
from ..output import AtomicOutput
from ..registry import MODELS
from ..scorer import DEFAULT_CACHE_BYTES
from .common import reports_errors


@click.command()
@click.argument("trace", type=str)
@click.option("--model", "model", default=None, help="Model directory from 'rfedge export' (default: "
              "$RFEDGE_MODEL, then the newest export in $RFEDGE_HOME, then the bundled demo).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto uses CUDA when onnxruntime-gpu sees a GPU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--batch-tokens", type=click.IntRange(min=1), default=DEFAULT_BATCH_TOKENS, show_default=True,
              help="Padded tokens per batch at most (bounds memory); a single trace always fits.")
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True,
              help="score = mean step reward + alpha x trajectory reward.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="Intra-op threads (0: all cores).")
@click.option("--cache-mb", type=click.IntRange(min=0), default=DEFAULT_CACHE_BYTES >> 20, show_default=True,
              help="Prefix cache for keys and values of traces already scored (traces sharing a prompt or a "
                   "partial trace run only what is new); 0 turns it off.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write results here (atomically) instead of stdout.")
@reports_errors
def score(trace, model, device, batch_size, batch_tokens, alpha, threads, cache_mb, output):
    """Score TRACE (.json with one object or a list, .jsonl, or - for stdin).

    One object in gives one JSON object out; a list or JSONL gives JSONL in input order, with an
    {"id", "error"} line for each bad record (exit 1 at the end).

    \b
    Example:
      rfedge score examples/trace.json
      cat traces.jsonl | rfedge score - --model ~/.cache/rfedge/models/gen-verse--reasonflux-prm-1.5b-int8
    """
    from ..home import resolve_model
    from ..jobs import score_source
    from ..scorer import Scorer
    from ..traces import open_traces

    choice = resolve_model(model)
    source = open_traces(trace)
    scorer = Scorer.load(choice.path, device=device, alpha=alpha, batch_size=batch_size,
                         batch_tokens=batch_tokens, threads=threads, cache_bytes=cache_mb << 20)
    click.echo(f"rfedge: model {scorer.manifest.describe()} [{choice.reason}], device {scorer.device}",
               err=True)
    if scorer.manifest.notice:
        click.echo(f"rfedge: note: {scorer.manifest.notice}", err=True)
    with AtomicOutput(output) as out:
        failed = score_source(scorer, source, out)
    if failed:
        click.echo(f"rfedge: {failed} record(s) could not be scored; see their 'error' fields", err=True)
        sys.exit(1)


@click.command()
@click.argument("task", type=click.Choice(["arith"]), default="arith")
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="Number of traces.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--candidates", type=click.IntRange(min=1), default=1, show_default=True,
              help="Traces per problem (Best-of-N groups, marked by a 'group' field).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write JSONL here (atomically) instead of stdout.")
@reports_errors
def generate(task, n, seed, candidates, output):
    """Generate synthetic TASK traces as JSONL (trajectory/response format plus labels and correct).

    \b
    Example:
      rfedge generate arith --n 200 --seed 7 -o heldout.jsonl
      rfedge generate arith --n 5 | rfedge score -
    """
    from ..synth import generate as gen

    with AtomicOutput(output) as out:
        for record in gen(task, n, seed, candidates):
            out.write(json.dumps(record) + "\n")


@click.command()
def models():
    """List the model families rfedge knows.

    \b
    Example:
      rfedge models
    """
    for m in MODELS:
        click.echo(f"{m.name:22} {m.role:9} {m.layout:12} {m.hub_id or '(bundled)':32} {m.description}")
