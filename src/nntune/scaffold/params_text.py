"""The params.yaml of a new project: this checkout's, comments kept, with the data keys of
the user's table filled in."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from nntune.config.metrics import Task
from nntune.scaffold.errors import ScaffoldError


def params_text(
    root: Path, source: Path, schema: Path, target: str, task: Task, exclude: Sequence[str] = ()
) -> str:
    """This checkout's params.yaml, comments kept, with the data keys set for the table
    (``exclude``: the identifier columns found). Values are YAML-quoted: a target named
    ``yes``, ``null`` or ``1``, or a path with ``#`` or ``: `` in it, stays the string it
    is."""
    text = (root / "params.yaml").read_text(encoding="utf-8")
    values: dict[str, str | list[str]] = {
        "source": source.as_posix(),
        "schema": schema.as_posix(),
        "target": target,
        "task": task,
        "exclude": list(exclude),
    }
    for key, value in values.items():
        pattern = re.compile(rf"^(  {key}: )(\S+)( *)(#.*)?$", flags=re.MULTILINE)
        match = pattern.search(text)
        if match is None:
            raise ScaffoldError(f"{root / 'params.yaml'}: no data.{key} line to fill in")
        quoted = json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML string
        line = match.group(1) + quoted
        if match.group(4):  # the comment stays in its column where the value allows
            width = len(match.group(2)) + len(match.group(3))
            line = line.ljust(len(match.group(1)) + width) + " " * (len(quoted) >= width)
            line += match.group(4)
        text = text[: match.start()] + line + text[match.end() :]
    return text


# Keys dvc.yaml interpolates (``${data.cv_folds}``): DVC cannot even read the pipeline of a
# params.yaml without them, so ``init --force`` adds them to a kept, older params.yaml.
INTERPOLATED = {"cv_folds": "[]"}
INTERPOLATED_COMMENT = "# added by nntune init: [] = no cross-validation"


def with_interpolated_keys(text: str) -> tuple[str, list[str]]:
    """``text`` (a params.yaml) with each missing interpolated ``data`` key added as the
    section's first line (its default, and a comment); returns the added dotted keys."""
    import yaml

    data = (yaml.safe_load(text) or {}).get("data")
    if not isinstance(data, dict):
        return text, []
    missing = [key for key in INTERPOLATED if key not in data]
    match = re.search(r"^data:[^\n]*\n", text, flags=re.MULTILINE)
    if not missing or match is None:
        return text, []
    lines = "".join(f"  {k}: {INTERPOLATED[k]}  {INTERPOLATED_COMMENT}\n" for k in missing)
    return text[: match.end()] + lines + text[match.end() :], [f"data.{k}" for k in missing]


# Sections a stage's params name (the ensemble stage's ``ensemble``): DVC refuses to run a
# pipeline whose params.yaml lacks one, so ``init --force`` appends it to an older file.
STAGE_SECTIONS = {"ensemble": "  members: []  # added by nntune init: [] = no ensemble\n"}


def with_stage_sections(text: str) -> tuple[str, list[str]]:
    """``text`` (a params.yaml) with each missing stage section appended at its default;
    returns the added section names."""
    import yaml

    loaded = yaml.safe_load(text) or {}
    missing = [name for name in STAGE_SECTIONS if name not in loaded]
    for name in missing:
        text = text.rstrip("\n") + f"\n\n{name}:\n{STAGE_SECTIONS[name]}"
    return text, missing
