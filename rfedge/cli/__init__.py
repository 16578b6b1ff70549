"""The ``rfedge`` command line. JSON to stdout, progress and notices to stderr.

Typed errors become one line and an exit code (2 for usage and data errors, 1 for missed
tolerances, failed writes and records that failed in a batch); anything else is a bug and keeps
its traceback. Each command parses its options and calls one library function: the scoring
commands live in :mod:`.scoring`, the export tooling's in :mod:`.tooling`.
"""

from __future__ import annotations

import click

from .common import reports_errors  # noqa: F401
from .scoring import generate, models, score, select, serve
from .tooling import demo, distill, export, parity, recipes


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rfedge")
def main():
    """rfedge: score reasoning traces with ReasonFlux-PRM process reward models on the edge."""


for command in (score, select, serve, generate, models, export, recipes, parity, distill, demo):
    main.add_command(command)
