"""`nntune init`'s text builders and command runner, without git or DVC."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from nntune.cli import project as cli_project
from nntune.config.metrics import TASKS
from nntune.config.params import parse_params
from nntune.config.sections import Params
from nntune.scaffold.params_text import params_text
from nntune.scaffold.project import (
    ScaffoldError,
    _command,
    _mismatches,
    gitignore_text,
)


def test_gitignore_anchors_the_plot_folders_and_keeps_the_users_lines() -> None:
    lines = ["# mine", "secrets.env", "plots/", "", "dvc_plots", "build/", "", ".nntune/"]
    text = gitignore_text(lines)
    assert text.splitlines() == [
        "# mine",
        "secrets.env",
        "/plots/",
        "",
        "/dvc_plots/",
        "build/",
        "",
        "/.nntune/",
        ".venv/",
        "__pycache__/",
        ".*.tmp-*/",
        ".*.old-*/",
    ]
    assert gitignore_text(text.splitlines()) == text  # a second init changes nothing


def test_gitignore_drops_an_unanchored_rule_the_anchored_one_already_covers() -> None:
    text = gitignore_text(["plots/", "/plots/", "notes/"])
    assert text.splitlines()[:2] == ["/plots/", "notes/"]
    assert "plots/" not in text.splitlines()


@pytest.mark.parametrize(
    "value", ["yes", "on", "null", "1", "0x1F", "~", "a #b", "a: b", "'q'", '"q"', "ünï"]
)
def test_params_text_quotes_strings_so_they_round_trip(value: str) -> None:
    source = Path("data") / f"{value}.csv"
    schema = Path("data") / f"{value}.schema.yaml"
    text = params_text(REPO, source, schema, value, "binary")
    data = yaml.safe_load(text)["data"]
    assert data["target"] == value
    assert data["source"] == source.as_posix()
    assert data["schema"] == schema.as_posix()
    assert data["task"] == "binary"
    assert parse_params(yaml.safe_load(text)).data.target == value


def test_params_text_keeps_the_comments_in_their_column() -> None:
    text = params_text(REPO, Path("data/c.csv"), Path("data/c.schema.yaml"), "y", "binary")
    original = (REPO / "params.yaml").read_text().splitlines()
    for line, before in zip(text.splitlines(), original, strict=True):
        if before.startswith(("  source:", "  schema:", "  target:", "  task:")):
            assert line.index("#") == before.index("#"), line


def test_params_text_excludes_the_identifier_columns_init_found() -> None:
    """init passes the id-like columns (nntune.stage.profiling) here; the new project's
    params.yaml then lists them under data.exclude, and nothing else changes."""
    plain = params_text(REPO, Path("data/c.csv"), Path("data/c.schema.yaml"), "y", "binary")
    text = params_text(
        REPO, Path("data/c.csv"), Path("data/c.schema.yaml"), "y", "binary", ["customer id", "no"]
    )
    assert parse_params(yaml.safe_load(text)).data.exclude == ("customer id", "no")
    assert parse_params(yaml.safe_load(plain)).data.exclude == ()
    changed = [a for a, b in zip(text.splitlines(), plain.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0].startswith("  exclude: ")


def test_a_failing_command_reports_all_it_printed(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError) as raised:
        _command(tmp_path, "sh", "-c", "echo on stdout; echo on stderr >&2; exit 3")
    message = str(raised.value)
    assert "`sh -c echo on stdout; echo on stderr >&2; exit 3` failed" in message
    assert "(exit 3): on stdout / on stderr" in message


def test_a_missing_program_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match="needs `no-such-program-nntune` on PATH"):
        _command(tmp_path, "no-such-program-nntune", "init")


def test_the_task_option_offers_exactly_the_tasks() -> None:
    hint = typing.get_type_hints(cli_project.init, include_extras=True)["task"]
    choice = typing.get_args(typing.get_args(hint)[0])[0]  # Annotated[Literal | None, ...]
    assert typing.get_args(choice) == TASKS


def test_kept_params_that_name_other_data_are_pointed_out(tiny_params: Params) -> None:
    data = tiny_params.data  # data/digits.csv -> target, multiclass
    assert _mismatches(data, Path(data.source), data.target, data.task) == []
    (note,) = _mismatches(data, Path("data/customers.csv"), "churn", data.task)
    assert note == (
        "kept params.yaml: data.source is 'data/digits.csv' (not 'data/customers.csv'), "
        "data.target is 'target' (not 'churn'); edit it, or rerun with --reset-params"
    )
