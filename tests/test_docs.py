"""The README's parameter reference and params.yaml's comments keep up with the loader."""

from __future__ import annotations

from typing import Any

from conftest import REPO, repo_params_dict


def _leaves(node: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        keys += _leaves(value, f"{dotted}.") if isinstance(value, dict) else [dotted]
    return keys


def test_readme_documents_every_parameter() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [k for k in _leaves(repo_params_dict()) if f"| `{k}` |" not in readme]
    assert not missing, f"README parameter table lacks {missing}"


def test_every_parameter_line_has_a_comment() -> None:
    lines = (REPO / "params.yaml").read_text().splitlines()
    bare = [
        line
        for line in lines
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":")
        if "#" not in line
    ]
    assert not bare, f"params.yaml lines without a comment: {bare}"
