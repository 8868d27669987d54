"""End-to-end: `nntune init` around a generated CSV with numeric and categorical columns and
missing values; `dvc repro` stops at validate under `missing: error` and trains under
`missing: impute`. Also: the experiments' curves reach git (`dvc plots diff`), `--force`
keeps params and repairs .gitignore, a subfolder of a git repository, a failing command's
message, and init from an installed wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO
from project import NNTUNE, run

pytestmark = pytest.mark.e2e


def customers(n_rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    plan = rng.choice(["basic", "plus", "pro"], size=n_rows)
    tenure = rng.integers(1, 60, size=n_rows).astype("float64")
    spend = rng.normal(50, 15, size=n_rows).round(2)
    churn = np.where((plan == "basic") & (tenure < 20) | (spend < 35), "yes", "no")
    frame = pd.DataFrame(
        {"id": np.arange(n_rows), "plan": plan, "tenure": tenure, "spend": spend, "churn": churn}
    )
    frame.loc[[5, 17, 42], "tenure"] = np.nan
    frame.loc[[8, 99], "plan"] = None
    return frame


def set_param(project: Path, key: str, value: str) -> None:
    params = project / "params.yaml"
    lines = params.read_text().splitlines()
    lines = [
        f"{line[: line.index(':') + 1]} {value}" if line.strip().startswith(f"{key}:") else line
        for line in lines
    ]
    params.write_text("\n".join(lines) + "\n")


def make_tiny(project: Path, pretrain: bool = False) -> None:
    """Params for a fast run of the customers table: no id feature, gaps imputed, a few
    epochs of a small model (and of the autoencoder, with ``pretrain``)."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["data"].update(exclude=["id"], missing="impute")
    raw["model"].update(units=8)
    raw["train"].update(max_epochs=3)
    raw["pretrain"].update(enabled=pretrain, epochs=2)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def init_customers(where: Path, name: str = "shop", rows: int = 200) -> Path:
    table = where / "customers.csv"
    customers(rows).to_csv(table, index=False)
    run(where, NNTUNE, "init", name, "--data", str(table), "--target", "churn")
    return where / name


def test_init_then_repro_on_your_own_csv(tmp_path: Path) -> None:
    source = tmp_path / "incoming" / "customers.csv"
    source.parent.mkdir()
    customers().to_csv(source, index=False)
    before = source.read_bytes()

    made = run(tmp_path, NNTUNE, "init", "shop", "--data", str(source), "--target", "churn")
    assert "task: binary (inferred from the target column" in made.stdout
    # the id column numbers the rows: init excluded it and said so
    assert "data.exclude: id: 300 distinct values in 300 rows" in " ".join(made.stderr.split())
    project = tmp_path / "shop"
    assert yaml.safe_load((project / "params.yaml").read_text())["data"]["exclude"] == ["id"]
    tracked = run(project, "git", "ls-files").stdout.splitlines()
    assert "data/customers.csv.dvc" in tracked and "data/customers.csv" not in tracked
    pipeline = {"dvc.yaml", "params.yaml", "stages/train.py", "src/nntune/stage/data.py"}
    assert pipeline <= set(tracked)
    assert "data/customers.schema.yaml" in tracked
    assert run(project, "git", "status", "--porcelain").stdout == ""
    assert source.read_bytes() == before  # the raw file is never modified

    refused = run(
        tmp_path, NNTUNE, "init", "shop", "--data", str(source), "--target", "churn", check=False
    )
    assert refused.returncode == 2 and "refusing to overwrite" in refused.stderr

    set_param(project, "max_epochs", "5")  # keep training short
    failed = run(project, "dvc", "repro", check=False)
    assert failed.returncode != 0
    assert "failed to reproduce 'validate'" in failed.stderr
    report = json.loads((project / "reports" / "validation.json").read_text())
    missing = {f["column"]: f for f in report["failures"]}
    assert missing["tenure"]["check"] == "no missing values (data.missing: error)"
    assert [e["row"] for e in missing["tenure"]["examples"]] == [5, 17, 42]
    assert [e["row"] for e in missing["plan"]["examples"]] == [8, 99]
    assert not (project / "data" / "prepared").exists()

    set_param(project, "missing", "impute")
    run(project, "dvc", "repro")
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    assert meta["features"] == ["tenure", "spend", "plan_basic", "plan_plus", "plan_pro"]
    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert evaluation["test_accuracy"] > 0.6
    assert set(evaluation) == {"test_accuracy", "test_f1_macro", "test_log_loss", "test_roc_auc"}
    assert source.read_bytes() == before


def files_under(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (bytecode caches aside), by its path relative to it."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_init_from_an_installed_wheel(tmp_path: Path) -> None:
    """`nntune init` works from a regular (non-editable) install: the wheel carries the
    pipeline files, exactly the checkout's; the project gets all of them and the whole
    library, byte for byte, and its pipeline runs."""
    source_tree = tmp_path / "checkout"
    files = run(REPO, "git", "ls-files", "--cached", "--others", "--exclude-standard").stdout
    for name in files.splitlines():
        if (REPO / name).is_file():
            (source_tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source_tree / name)
    wheels = tmp_path / "wheels"
    run(
        source_tree,
        sys.executable,
        *("-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--quiet"),
        *("-w", str(wheels)),
    )
    (wheel,) = wheels.glob("nntune-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    packaged = files_under(site / "nntune" / "pipeline")
    stages = sorted(p.relative_to(source_tree).as_posix() for p in source_tree.glob("stages/*.py"))
    assert sorted(packaged) == sorted(
        ["dvc.yaml", "params.yaml", "grid.yaml", ".dvcignore", *stages]
    )
    for name, content in packaged.items():
        assert content == (source_tree / name).read_bytes(), name
    library = {
        name: content
        for name, content in files_under(site / "nntune").items()
        if not name.startswith("pipeline/")
    }
    checkout = files_under(source_tree / "src" / "nntune")
    assert library == {n: c for n, c in checkout.items() if n.endswith(".py")}

    table = tmp_path / "customers.csv"
    customers(120).to_csv(table, index=False)
    command = (
        "import sys, nntune; from nntune.cli import app; "
        "print('library:', nntune.__file__, file=sys.stderr); app()"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    made = subprocess.run(
        [sys.executable, "-c", command, "init", "shop", "--data", str(table), "--target", "churn"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    assert f"library: {site / 'nntune' / '__init__.py'}" in made.stderr
    project = tmp_path / "shop"
    # Every file the scaffold copies: the pipeline at the root (params.yaml gets the data
    # keys filled in), the whole library under src/nntune, no packaged copy inside it.
    for name, content in packaged.items():
        if name != "params.yaml":
            assert (project / name).read_bytes() == content, name
    # (and exclude: the table's id column numbers the rows, so init excludes it)
    filled = ("  source:", "  schema:", "  target:", "  task:", "  exclude:")
    params = (project / "params.yaml").read_text().splitlines()
    original = packaged["params.yaml"].decode().splitlines()
    assert [a for a in params if not a.startswith(filled)] == [
        b for b in original if not b.startswith(filled)
    ]
    assert files_under(project / "src" / "nntune") == library

    make_tiny(project)
    run(project, "dvc", "repro")
    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert evaluation["test_accuracy"] > 0.5


def learning_curves(project: Path) -> dict[str, set[str]]:
    """dvc.yaml's plots whose x is the epoch, with the files each one draws."""
    declared = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    return {
        name: set(props["y"])
        for plot in declared
        for name, props in plot.items()
        if props.get("x") == "step"
    }


def test_experiment_curves_reach_git_so_dvc_plots_diff_compares_them(tmp_path: Path) -> None:
    """The scaffold's .gitignore anchors `/plots/`: an unanchored `plots/` also ignored
    dvclive's own `dvclive/plots/`, so no experiment committed its curves."""
    project = init_customers(tmp_path)
    ignore = (project / ".gitignore").read_text().splitlines()
    assert {"/plots/", "/dvc_plots/", "/.nntune/", ".*.tmp-*/", ".*.old-*/"} <= set(ignore)
    make_tiny(project, pretrain=True)  # so every learning curve dvc.yaml declares exists
    run(project, "git", "commit", "--quiet", "-am", "tiny params")
    run(project, NNTUNE, "grid", "-p", "model.units=4,8")
    run(project, NNTUNE, "run", "-j", "2")

    shown = json.loads(run(project, "dvc", "plots", "diff", "u4", "u8", "--json").stdout)
    assert not shown.get("errors"), shown.get("errors")
    curves = learning_curves(project)
    assert len(curves) == 3  # loss, accuracy, the autoencoder's loss
    for name, files in curves.items():
        (entry,) = shown["data"][name]
        drawn = {(row["rev"], row["filename"]) for row in entry["content"]["data"]["values"]}
        assert {rev for rev, _ in drawn} == {"u4", "u8"}, name
        assert len(drawn) == 2 * len(files), (name, sorted(drawn))
    refs = run(project, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout
    (u4,) = [ref for ref in refs.split() if ref.endswith("/u4")]
    tracked = run(project, "git", "ls-tree", "-r", "--name-only", u4).stdout.splitlines()
    assert set().union(*curves.values()) <= set(tracked)

    page = run(project, NNTUNE, "plots", "--top", "2")
    assert "warning" not in page.stderr, page.stderr
    assert "wrote plots/experiments.html (4 charts, 2 experiments)" in page.stdout


def test_init_force_repairs_gitignore_and_keeps_params(tmp_path: Path) -> None:
    project = init_customers(tmp_path, rows=120)
    table = str(tmp_path / "customers.csv")
    old_style = "# the user's own\nsecrets.env\nplots/\ndvc_plots/\n.venv/\n"
    (project / ".gitignore").write_text(old_style)
    params = project / "params.yaml"
    edited = params.read_text().replace("max_epochs: 200 ", "max_epochs: 7   ")
    params.write_text(edited)
    schema = project / "data" / "customers.schema.yaml"
    schema.write_text(schema.read_text() + "# tightened by hand\n")
    run(project, "git", "commit", "--quiet", "-am", "the user's changes")

    force = ["init", "shop", "--data", table, "--target", "churn", "--force"]
    again = run(tmp_path, NNTUNE, *force)
    assert (project / ".gitignore").read_text().splitlines()[:5] == [
        "# the user's own",
        "secrets.env",
        "/plots/",
        "/dvc_plots/",
        ".venv/",
    ]
    assert params.read_text() == edited and schema.read_text().endswith("by hand\n")
    # Only what changed since the first init: .gitignore (and library files another
    # checkout edited meanwhile, if any), never the kept params.
    (replaced,) = [line for line in again.stdout.splitlines() if line.startswith("replaced")]
    assert ".gitignore" in replaced.split(": ", 1)[1].split(", ")
    assert "params.yaml" not in replaced and "schema" not in replaced
    assert "kept params.yaml, data/customers.schema.yaml (--reset-params" in again.stdout
    staged = run(project, "git", "diff", "--cached", "--name-only").stdout.splitlines()
    assert ".gitignore" in staged and "params.yaml" not in staged

    reset = run(tmp_path, NNTUNE, *force, "--reset-params")
    assert "max_epochs: 200" in params.read_text()
    assert "tightened by hand" not in schema.read_text()
    assert "params.yaml" in reset.stdout.split("replaced")[1] and "kept" not in reset.stdout


def test_init_force_removes_a_library_of_an_older_layout(tmp_path: Path) -> None:
    """A project vendored by an nntune with the flat layout (src/nntune/params.py, ...):
    --force leaves exactly this nntune's library, with the old modules' removal staged."""
    project = init_customers(tmp_path, rows=120)
    library = project / "src" / "nntune"
    ours = sorted(p.relative_to(library) for p in library.rglob("*.py"))
    old = ["params.py", "warm.py", "experiments.py", "stage.py", "old_pkg/__init__.py"]
    for name in old:
        (library / name).parent.mkdir(exist_ok=True)
        (library / name).write_text("raise ImportError('a module of an older layout')\n")
    run(project, "git", "add", "src")
    run(project, "git", "commit", "--quiet", "-m", "an older nntune's library")

    table = str(tmp_path / "customers.csv")
    again = run(tmp_path, NNTUNE, "init", "shop", "--data", table, "--target", "churn", "--force")
    assert sorted(p.relative_to(library) for p in library.rglob("*.py")) == ours
    assert not (library / "old_pkg").exists()
    (line,) = [x for x in again.stdout.splitlines() if x.startswith("removed")]
    assert all(f"src/nntune/{name}" in line for name in old), line
    staged = run(project, "git", "diff", "--cached", "--name-status").stdout.splitlines()
    assert {f"D\tsrc/nntune/{name}" for name in old} <= set(staged)
    make_tiny(project)
    run(project, "dvc", "repro", "prepare")  # the pipeline runs on the new library


def test_init_in_a_subfolder_of_a_git_repository(tmp_path: Path) -> None:
    """A DVC repository of its own (dvc init --subdir) inside the user's git repository;
    only init's files are staged, the user's own changes stay as they were."""
    outer = tmp_path / "monorepo"
    outer.mkdir()
    run(outer, "git", "init", "--quiet")
    (outer / "notes.txt").write_text("mine\n")
    (outer / ".gitignore").write_text("plots/\n")  # unanchored: hides dvclive/plots too
    run(outer, "git", "add", "notes.txt", ".gitignore")
    run(outer, "git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "mine")
    (outer / "notes.txt").write_text("mine, edited\n")
    (outer / "draft.txt").write_text("not for git yet\n")
    customers(120).to_csv(tmp_path / "customers.csv", index=False)
    table = str(tmp_path / "customers.csv")

    made = run(outer, NNTUNE, "init", "ml/churn", "--data", table, "--target", "churn")
    project = outer / "ml" / "churn"
    assert "its own DVC repository (dvc init --subdir)" in made.stdout
    assert "the files init wrote are staged" in made.stdout
    assert f"({outer / '.gitignore'}:1: plots/)" in made.stderr  # the curves would be lost
    assert (project / ".dvc" / "config").is_file() and not (outer / ".dvc").exists()
    status = run(outer, "git", "status", "--porcelain").stdout.splitlines()
    assert " M notes.txt" in status and "?? draft.txt" in status
    staged = [line[3:] for line in status if line[0] == "A"]
    assert len(staged) == len(status) - 2
    assert all(path.startswith("ml/churn/") for path in staged)
    assert {"ml/churn/dvc.yaml", "ml/churn/data/customers.csv.dvc", "ml/churn/.dvc/config"} <= {
        *staged
    }
    assert "ml/churn/data/customers.csv" not in staged

    make_tiny(project)
    assert "validate" in run(project, "dvc", "status").stdout
    run(project, "dvc", "repro", "validate")
    assert json.loads((project / "reports" / "validation.json").read_text())["valid"]


def test_a_failing_git_or_dvc_command_is_one_line_with_its_output(tmp_path: Path) -> None:
    outer = tmp_path / "repo"
    outer.mkdir()
    run(outer, "git", "init", "--quiet")
    (outer / ".gitignore").write_text("*.dvc\n")  # hides .dvc/ too: DVC refuses
    customers(120).to_csv(tmp_path / "customers.csv", index=False)
    table = str(tmp_path / "customers.csv")
    failed = run(outer, NNTUNE, "init", "proj", "--data", table, "--target", "churn", check=False)
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: `dvc init --subdir` failed in proj (exit 1): ERROR:")
    assert "proj/.dvc is ignored by your SCM tool. / Make sure that it's tracked" in failed.stderr
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
