"""The stage scripts are thin, and dvc.yaml declares every library module each one imports:
a missing dep would let DVC skip a stage whose code changed."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, repo_params_dict

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = list(DVC_YAML["stages"])


def stage_spec(stage: str) -> dict[str, Any]:
    """A stage's definition; for a foreach stage (fold) the template every entry gets."""
    spec: dict[str, Any] = DVC_YAML["stages"][stage]
    return spec.get("do", spec)


LIST_IMPORTS = """
import ast, importlib, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("stage_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)  # imports only: main() runs under __main__ alone
eager_tensorflow = "tensorflow" in sys.modules
# Imports inside main() (done only on some paths, e.g. pretraining enabled) count as deps too.
for node in ast.walk(ast.parse(open(sys.argv[1]).read())):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nntune"):
        for alias in node.names:
            try:
                importlib.import_module(f"{node.module}.{alias.name}")
            except ModuleNotFoundError:
                importlib.import_module(node.module)
print(json.dumps({
    "nntune": sorted(
        m.__file__ for name, m in sys.modules.items()
        if (name == "nntune" or name.startswith("nntune.")) and getattr(m, "__file__", None)
    ),
    "tensorflow": eager_tensorflow,
}))
"""


@functools.cache
def stage_imports(script: str) -> tuple[frozenset[str], bool, str]:
    """(nntune files relative to the repo, whether TensorFlow got imported when the script
    is loaded, its stderr) for a script imported the way its dvc.yaml command runs it; the
    files include modules imported inside functions."""
    env = {**os.environ, "PYTHONPATH": "src", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", LIST_IMPORTS, script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout.splitlines()[-1])
    files = frozenset(str(Path(f).resolve().relative_to(REPO)) for f in found["nntune"])
    return files, found["tensorflow"], out.stderr


def test_pipeline_has_the_eight_stages_in_order() -> None:
    assert STAGES == [
        "validate",
        "prepare",
        "fold",
        "pretrain",
        "warmstart",
        "train",
        "evaluate",
        "ensemble",
    ]
    assert DVC_YAML["stages"]["fold"]["foreach"] == "${data.cv_folds}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_declares_every_library_module_it_imports(stage: str) -> None:
    spec = stage_spec(stage)
    script = spec["cmd"].split()[2]
    assert spec["cmd"].startswith("PYTHONPATH=src python stages/")
    imported, _, _ = stage_imports(script)
    assert imported, "the stage imports no nntune module: is PYTHONPATH=src honoured?"
    declared = set(spec["deps"])
    assert script in declared
    assert imported <= declared, f"{stage} imports undeclared modules: {imported - declared}"
    # And the other way round: no module listed that the stage never imports.
    library_deps = {d for d in declared if d.startswith("src/")}
    assert library_deps <= imported, f"{stage} declares unused deps: {library_deps - imported}"


@pytest.mark.parametrize("stage", ["validate", "prepare", "pretrain", "warmstart"])
def test_stages_import_tensorflow_only_when_they_train(stage: str) -> None:
    _, tensorflow, _ = stage_imports(f"stages/{stage}.py")
    assert tensorflow is False


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_loading_tensorflow_in_a_stage_prints_none_of_its_noise(stage: str) -> None:
    """TensorFlow's start-up lines on fd 2 (INFO, a cuInit error without a GPU), which
    TF_CPP_MIN_LOG_LEVEL no longer silences, stay out of `dvc repro`'s output."""
    from nntune.stage.quiet import is_noise

    _, tensorflow, stderr = stage_imports(f"stages/{stage}.py")
    assert tensorflow is True
    assert not [line for line in stderr.splitlines() if is_noise(line)], stderr


@pytest.mark.parametrize("stage", STAGES)
def test_stage_scripts_stay_thin(stage: str) -> None:
    lines = (REPO / "stages" / f"{stage}.py").read_text().splitlines()
    assert len(lines) <= 45


def test_profile_record_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nntune.stage.entry import PROFILE_ENV, run_stage

    profile = tmp_path / "profile.jsonl"
    monkeypatch.setattr(sys, "argv", ["stages/train.py", "params.yaml"])
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    run_stage(lambda args: None, None, "params")
    assert not profile.exists()  # off unless asked
    monkeypatch.setenv(PROFILE_ENV, str(profile))
    seen = []
    run_stage(lambda args: seen.append(args.params), None, "params")
    run_stage(lambda args: None, None, "params")
    lines = [json.loads(line) for line in profile.read_text().splitlines()]
    assert seen == ["params.yaml"] and len(lines) == 2
    assert lines[0]["stage"] == "train" and lines[0]["workspace"] == str(Path.cwd())
    assert lines[0]["process_start"] <= lines[0]["main_start"] <= lines[0]["main_end"]
    assert lines[0]["max_rss_mb"] > 10  # this test process: Python, pandas, pytest


def test_train_stage_does_not_load_scikit_learn() -> None:
    """`import keras` would load its scikit-learn wrappers, scikit-learn and SciPy's stats
    (about 1.3 s of each trial); the train stage hides scikit-learn while Keras loads."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "stages" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert "keras" in imported and "nntune.stage.training" in imported
    assert not [m for m in imported if m.startswith(("sklearn.", "scipy.stats"))]


def test_scikit_learn_still_imports_after_keras_loaded_without_it() -> None:
    code = (
        "from nntune.stage.entry import import_keras_without_sklearn as load\n"
        "load()\n"
        "import sys, keras\n"
        "assert 'sklearn' not in sys.modules\n"
        "from sklearn.metrics import accuracy_score\n"
        "print(accuracy_score([1, 0], [1, 1]), keras.layers.Dense(2).units)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.stdout.split() == ["0.5", "2"]


def test_a_stage_process_exits_without_teardown_after_its_outputs(tmp_path: Path) -> None:
    """run_stage ends the stage's own process with os._exit once main has returned: exit
    handlers run and buffered output is flushed, module teardown (1.2-1.6 s with
    TensorFlow loaded) does not."""
    script = tmp_path / "stage.py"
    script.write_text(
        "import atexit, sys\n"
        "from nntune.stage.entry import run_stage\n"
        "class Teardown:\n"
        "    def __del__(self):\n"
        "        print('torn down', flush=True)\n"
        "kept = Teardown()\n"
        "atexit.register(lambda: print('exit handler ran'))\n"
        "def main(args):\n"
        "    print('buffered, no newline', end='')\n"
        "    open(args.out, 'w').write('done')\n"
        "if __name__ == '__main__':\n"
        "    run_stage(main, None, 'out')\n"
    )
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out.txt")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "buffered, no newline" in out.stdout and "exit handler ran" in out.stdout
    assert "torn down" not in out.stdout
    assert (tmp_path / "out.txt").read_text() == "done"


def test_process_start_is_exact_to_the_tick() -> None:
    from nntune.stage.entry import process_start

    before = time.time()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"]) as child:
        started = process_start(child.pid)
        after = time.time()
        child.kill()
    # psutil's create_time() can be up to 1 s off (whole-second boot time)
    assert before - 0.02 <= started <= after


def test_pretrain_off_replaces_its_folders_whole(tmp_path: Path) -> None:
    """With pretrain.enabled false the stage leaves only {"enabled": false} and the OFF
    note: no encoder or curves of an earlier, enabled run survive beside them (outside
    DVC, which removes outputs itself, e.g. a stage run by hand)."""
    raw = repo_params_dict()
    raw["pretrain"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for old in ("models/pretrained/encoder.keras", "dvclive_pretrain/plots/metrics/train/loss.tsv"):
        (tmp_path / old).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / old).write_text("an earlier, enabled run")
    paths = ["data/prepared", "models/pretrained", "metrics/pretrain.json", "dvclive_pretrain"]
    subprocess.run(
        [sys.executable, str(REPO / "stages" / "pretrain.py"), "params.yaml", *paths],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        check=True,
        timeout=120,
    )

    def files(folder: str) -> list[str]:
        found = (tmp_path / folder).rglob("*")
        return sorted(str(p.relative_to(tmp_path)) for p in found if p.is_file())

    assert files("models") == ["models/pretrained/info.json"]
    assert files("dvclive_pretrain") == ["dvclive_pretrain/OFF"]
    assert json.loads((tmp_path / "models/pretrained/info.json").read_text()) == {"enabled": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dvclive_pretrain", "metrics", "models", "params.yaml"
    ]  # fmt: skip
