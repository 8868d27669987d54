"""The Typer application, its global options and its sub-apps; every command module
registers itself on ``app`` when :mod:`nntune.cli` imports it."""

from __future__ import annotations

from typing import Annotated

import typer

from nntune.cli.boundary import ErrorBoundary

app = typer.Typer(
    help="Declarative, reproducible neural-network tuning as a DVC pipeline.",
    no_args_is_help=True,
    add_completion=False,
    cls=ErrorBoundary,  # the one place errors become messages (nntune.cli.boundary)
)


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="show tracebacks instead of one-line errors (or NNTUNE_DEBUG=1)"
        ),
    ] = False,
) -> None:
    """Declarative, reproducible neural-network tuning as a DVC pipeline."""
    ctx.meta["nntune.debug"] = debug


remote_app = typer.Typer(help="Share experiments through a git remote and a DVC remote.")
app.add_typer(remote_app, name="remote")


schema_app = typer.Typer(help="pandera schemas of the input table.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
