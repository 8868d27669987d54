"""The one error boundary of the ``nntune`` command line.

Every command raises; none prints its own errors. Here, at the entry point, a known error
(``NntuneError``, DVC's and git's errors) becomes one line on stderr that says what went
wrong and what to do, and exit code 2. Anything else is a bug: one line naming it, a hint
to rerun with ``--debug``, and exit code 1. ``--debug`` (or ``NNTUNE_DEBUG=1``) lets every
error through with its traceback.

It is a click group, so ``nntune`` itself and typer's ``CliRunner`` in the tests go
through the same boundary.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.core import TyperGroup

from nntune.errors import NntuneError

KNOWN_ERROR_EXIT = 2
BUG_EXIT = 1


def debugging(ctx: Any = None) -> bool:
    """``--debug`` on the command line (kept in the click context's meta), or the env."""
    if os.environ.get("NNTUNE_DEBUG", "").strip().lower() in ("1", "true", "yes"):
        return True
    while ctx is not None:
        if ctx.meta.get("nntune.debug"):
            return True
        ctx = ctx.parent
    return False


class ErrorBoundary(TyperGroup):
    """The app's group: runs the command, turns what it raised into a message."""

    # ``ctx`` is click's Context, which typer vendors since 0.22: Any keeps this valid
    # against both.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if _is_cli_control(exc) or debugging(ctx):
                raise  # typer's exits and usage errors: click reports them itself
            message, code = describe(exc)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code) from None


def _is_cli_control(exc: BaseException) -> bool:
    """typer.Exit, typer.Abort and click's usage errors (from click or typer's copy)."""
    return type(exc).__module__.split(".")[0] in ("typer", "click")


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an error raised by a command."""
    if isinstance(exc, NntuneError):
        return str(exc), KNOWN_ERROR_EXIT
    dvc = _dvc_message(exc)
    if dvc is not None:
        return dvc, KNOWN_ERROR_EXIT
    if _is_scm_error(exc):
        return f"git: {_text(exc)}; check the repository with `git status`", KNOWN_ERROR_EXIT
    if isinstance(exc, OSError) and exc.filename:
        reason = exc.strerror or type(exc).__name__
        return f"{exc.filename}: {reason}", KNOWN_ERROR_EXIT
    return (
        f"unexpected {type(exc).__name__}: {_text(exc)} (a bug in nntune: rerun with --debug "
        "or NNTUNE_DEBUG=1 for the traceback, and report it)",
        BUG_EXIT,
    )


def _text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _dvc_message(exc: BaseException) -> str | None:
    """DVC's errors, the frequent ones with what to do next; None if not DVC's."""
    try:
        from dvc.exceptions import DvcException, NotDvcRepoError
        from dvc.lock import LockError
        from dvc.repo.experiments.exceptions import ExperimentExistsError
    except ImportError:  # pragma: no cover - DVC is a dependency
        return None
    if not isinstance(exc, DvcException):
        return None
    text = _text(exc)
    if isinstance(exc, ExperimentExistsError):
        return (
            f"DVC: {text} An experiment of that name exists already: pick another name, or "
            "remove the old one first (dvc exp remove NAME)"
        )
    if isinstance(exc, LockError):
        return (
            f"DVC: {text} Another dvc or nntune command holds the project's lock: wait for "
            "it to end (a killed one releases it when its process is gone)"
        )
    if isinstance(exc, NotDvcRepoError):
        return f"{text}: run this inside an nntune project (`nntune init`, or `dvc init`)"
    if exc.__cause__ is not None:  # DVC often wraps the reason: "SCM error" from ...
        text = f"{text} ({_text(exc.__cause__)})"
    name = type(exc).__name__
    if "Remote" in name or "Network" in name or "Upload" in name or "Download" in name:
        return f"DVC remote: {text} Check the remote's URL and credentials (dvc remote list)"
    return f"DVC: {text}"


def _is_scm_error(exc: BaseException) -> bool:
    try:
        from scmrepo.exceptions import SCMError
    except ImportError:  # pragma: no cover - DVC depends on scmrepo
        return False
    return isinstance(exc, SCMError)
