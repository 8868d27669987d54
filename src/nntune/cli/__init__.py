"""The ``nntune`` command line: ``app`` holds the Typer application and its one error
boundary (``boundary``); commands are grouped by the user's job: ``project`` (init, check,
validate, schema), ``tune`` (grid, run, search), ``results`` (compare, best, plots, gc),
``ensembles`` (ensemble), ``insight`` (importance, lr-find), ``serve`` (predict, export:
use the tuned model), ``trials`` (logs) and ``remote`` (trial, slurm-script, remote
setup)."""

from nntune.cli import ensembles, insight, project, remote, results, serve, trials, tune
from nntune.cli.app import app

__all__ = ["app", "ensembles", "insight", "project", "remote", "results", "serve", "trials", "tune"]
