"""The runtime's commands: score, generate, models (numpy, onnxruntime, tokenizers, click only)."""

from __future__ import annotations

import json
import sys

import click

from ..output import AtomicOutput
from ..registry import MODELS
from .common import input_options, load_scorer, ray_options, ray_setup, reports_errors, scorer_options


@click.command()
@click.argument("trace", type=str)
@scorer_options
@input_options
@ray_options
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write results here (atomically) instead of stdout.")
@reports_errors
def score(trace, output, fmt, max_record_mb, use_ray, address, actors, threads_per_actor, **options):
    """Score TRACE (.jsonl, .json with one object or a list, .parquet, or - for stdin).

    One object in gives one JSON object out; a list or JSONL gives JSONL in input order, with an
    {"id", "error"} line for each bad record (exit 1 at the end). With --ray, TRACE is JSONL or
    Parquet (a file, a folder or a glob) scored on Ray Data; -o OUT.parquet keeps the input's columns.

    \b
    Example:
      rfedge score examples/trace.json
      cat traces.jsonl | rfedge score - --model ~/.cache/rfedge/models/gen-verse--reasonflux-prm-1.5b-int8
      rfedge score 'shards/*.parquet' --ray --actors 2 -o scored.parquet
    """
    from ..jobs import score_source
    from ..sources import open_traces

    on_ray = ray_setup(use_ray, address, actors, threads_per_actor, **options)
    if on_ray:
        _score_on_ray(trace, fmt, output, on_ray, options, max_record_mb << 20)
        return
    source = open_traces(trace, fmt, max_record_mb << 20)
    scorer = load_scorer(**options)
    with AtomicOutput(output) as out:
        failed = score_source(scorer, source, out)
    if failed:
        click.echo(f"rfedge: {failed} record(s) could not be scored; see their 'error' fields", err=True)
        sys.exit(1)


def _actor_options(options: dict) -> dict:
    """The scorer options each Ray actor gets (threads: --threads-per-actor)."""
    return {"batch_size": options["batch_size"], "batch_tokens": options["batch_tokens"], "alpha": options["alpha"],
            "cache_bytes": options["cache_mb"] << 20}


def _score_on_ray(trace, fmt, output, on_ray, options: dict, max_record_bytes: int) -> None:
    import time

    from ..distributed import ray_errors, scored_input, write_scores

    (ray_opts, model_dir), t0 = on_ray, time.perf_counter()
    with ray_errors():
        ds, _ = scored_input(trace, fmt, model_dir, ray_opts, max_record_bytes, **_actor_options(options))
        s = write_scores(ds, output)
    click.echo(f"rfedge score --ray: {s.rows} rows, {s.errors} could not be scored, {s.tokens} tokens, "
               f"{time.perf_counter() - t0:.1f} s", err=True)
    if s.errors:
        sys.exit(1)


def _ray_pass(on_ray, options: dict, max_record_bytes: int):
    """``rfedge select``'s scoring pass on Ray: (path, format) -> scored rows in input order."""
    from ..distributed import ray_errors, scored_input, scored_rows

    ray_opts, model_dir = on_ray

    def score(path: str, fmt: str):
        with ray_errors():
            ds, lines = scored_input(path, fmt, model_dir, ray_opts, max_record_bytes, keep_where=True,
                                     **_actor_options(options))
        return scored_rows(ds, lines, max_record_bytes)
    return score


@click.command()
@click.argument("data", type=str)
@click.option("--top-k", type=click.IntRange(min=1), required=True, help="Records kept per group.")
@click.option("--group-by", default=None, help="Group by this field of the record (default: identical problem).")
@click.option("--min-score", type=float, default=None, help="Keep only records scoring at least this.")
@scorer_options
@input_options
@ray_options
@click.option("--output", "-o", default=None, help="Write the kept records here (.jsonl or .parquet; default: stdout).")
@click.option("--output-format", type=click.Choice(["jsonl", "parquet"]), default=None,
              help="Output format (default: by the output's suffix, JSON lines for stdout).")
@click.option("--errors", "errors_path", default=None,
              help="Records that could not be scored, one JSON line each (default: OUT.errors.jsonl; stderr when "
                   "the output is stdout).")
@reports_errors
def select(data, top_k, group_by, min_score, output, output_format, errors_path, fmt, max_record_mb, use_ray, address,
           actors, threads_per_actor, **options):
    """Keep the TOP-K best-scoring records of each group of DATA (.jsonl, .json, .parquet or -): the
    paper's offline data selection.

    Writes the original records that were kept, in input order, each with an added "rfedge" field
    {score, trajectory_reward, rank}. Memory is bounded by groups x K, not by the file.

    \b
    Example:
      rfedge generate arith --n 4000 --candidates 4 -o candidates.jsonl
      rfedge select candidates.jsonl --top-k 1 --group-by group -o best.jsonl
      rfedge select trajectories.parquet --top-k 2 --min-score 1.2 -o selected.parquet
      rfedge select candidates.jsonl --top-k 1 --group-by group --ray --actors 2 -o best.jsonl
    """
    from ..select import default_errors_path
    from ..select import select as run_select
    from ..sources import check_input

    if data != "-":
        check_input(data)
    on_ray = ray_setup(use_ray, address, actors, threads_per_actor, **options)
    scorer = None if on_ray else load_scorer(**options)
    errors_path = errors_path or default_errors_path(output)
    stats = run_select(scorer, data, output, top_k, group_by, min_score, fmt, errors_path, max_record_mb << 20,
                       output_format, score=_ray_pass(on_ray, options, max_record_mb << 20) if on_ray else None)
    where = f" (see {errors_path})" if stats.errors and errors_path else ""
    click.echo(f"rfedge select: {stats.summary(top_k)}{where}", err=True)
    if stats.errors:
        sys.exit(1)


@click.command()
@scorer_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option("--max-batch-tokens", type=click.IntRange(min=0), default=16384, show_default=True,
              help="Token budget of a batch gathered across requests (0: no batching across requests).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a request waits for others to batch with.")
@click.option("--max-queue", type=click.IntRange(min=1), default=512, show_default=True,
              help="Requests waiting at most; more get 503 with Retry-After.")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=16 << 20, show_default=True,
              help="Larger request bodies get 413 (without being read).")
@click.option("--api-key", default=None, envvar="RFEDGE_API_KEY",
              help="Require 'Authorization: Bearer KEY' (also $RFEDGE_API_KEY).")
@click.option("--served-name", default=None, help="The model name clients send and /v1/models lists "
              "(default: the export's source id).")
@reports_errors
def serve(host, port, max_batch_tokens, batch_wait_ms, max_queue, max_request_bytes, api_key, served_name, **options):
    """Serve the model over HTTP: vLLM's POST /pooling for process reward models, rfedge's POST
    /v1/score, GET /v1/models, /health and /metrics (the serve extras).

    \b
    Example:
      rfedge serve --model ~/.cache/rfedge/models/gen-verse--reasonflux-prm-1.5b-int8 --port 8001
      curl -s localhost:8001/pooling -d '{"input": "2 + 3 = 5<extra_0>The answer is 5.<extra_0>"}'
    """
    from ..extras import require

    require("fastapi", "serve", "rfedge serve")
    require("uvicorn", "serve", "rfedge serve")
    from ..serve.app import ServeConfig
    from ..serve.run import serve as run_server

    scorer = load_scorer(**options)
    config = ServeConfig(max_batch_tokens, batch_wait_ms, max_queue, max_request_bytes, api_key, served_name)
    run_server(scorer, host, port, config)


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
