"""Warm start: the parent's model comes out of DVC's cache by md5, and only a model the
params would build (same layers, optimiser and rate) may be continued."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import make_table
from project import run

from nntune.config.sections import Params, WarmStartParams
from nntune.stage.artifacts import file_md5
from nntune.stage.model import build_model
from nntune.stage.preprocess import prepare
from nntune.stage.warmstart import WarmStartError, load, materialise


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    run(root, "git", "init", "-q")
    run(root, "dvc", "init", "-q")
    return root


def _cache(root: Path, path: Path) -> str:
    """Put ``path`` into the repo's DVC cache (as `dvc add` would) and return its md5."""
    target = root / path.name
    shutil.copyfile(path, target)
    run(root, "dvc", "add", "-q", path.name)
    return file_md5(target)


def _parent(tiny_params: Params, tmp_path: Path) -> tuple[Path, Params]:
    data = prepare(make_table(), tiny_params.data)
    net = build_model(
        tiny_params.model, tiny_params.train, len(data.features), data.task, len(data.classes)
    )
    net.fit(*data.xy("train"), epochs=1, verbose=0)  # a parent has trained: optimiser built
    path = tmp_path / "model.keras"
    net.save(path)
    return path, tiny_params


def _warm(params: Params, md5: str, epochs: int = 2) -> Params:
    warm = WarmStartParams(experiment="parent-exp", model_md5=md5, epochs=epochs)
    return dataclasses.replace(params, train=dataclasses.replace(params.train, warm_start=warm))


def test_off_writes_only_a_note_without_dvc(tmp_path: Path, tiny_params: Params) -> None:
    materialise(tiny_params.train.warm_start, tmp_path / "init", repo_root=tmp_path / "none")
    assert json.loads((tmp_path / "init/warm_start.json").read_text()) == {"enabled": False}
    data = prepare(make_table(), tiny_params.data)
    assert load(tmp_path / "init", tiny_params, data) is None


def test_copies_the_parent_model_out_of_the_cache_by_md5(
    dvc_repo: Path, tmp_path: Path, tiny_params: Params
) -> None:
    model, params = _parent(tiny_params, tmp_path)
    md5 = _cache(dvc_repo, model)
    params = _warm(params, md5)
    materialise(params.train.warm_start, dvc_repo / "models/init", repo_root=dvc_repo)
    assert file_md5(dvc_repo / "models/init/model.keras") == md5
    info = json.loads((dvc_repo / "models/init/warm_start.json").read_text())
    assert info == {"enabled": True, "experiment": "parent-exp", "model_md5": md5, "epochs": 2}
    data = prepare(make_table(), params.data)
    net = load(dvc_repo / "models/init", params, data)
    assert net is not None and net.optimizer is not None


def test_a_model_missing_from_the_cache_is_named_with_the_fix(
    dvc_repo: Path, tiny_params: Params
) -> None:
    params = _warm(tiny_params, "0" * 32)
    with pytest.raises(WarmStartError, match=r"parent-exp.*not in DVC's cache.*dvc exp pull"):
        materialise(params.train.warm_start, dvc_repo / "models/init", repo_root=dvc_repo)
    assert not (dvc_repo / "models/init/warm_start.json").exists()


def test_a_model_params_would_not_build_is_refused(
    dvc_repo: Path, tmp_path: Path, tiny_params: Params
) -> None:
    model, params = _parent(tiny_params, tmp_path)
    params = _warm(params, _cache(dvc_repo, model))
    materialise(params.train.warm_start, dvc_repo / "init", repo_root=dvc_repo)
    data = prepare(make_table(), params.data)
    wider = dataclasses.replace(params, model=dataclasses.replace(params.model, units=(32,)))
    with pytest.raises(WarmStartError, match="layers differ"):
        load(dvc_repo / "init", wider, data)
    faster = dataclasses.replace(params, train=dataclasses.replace(params.train, learning_rate=0.5))
    with pytest.raises(WarmStartError, match=r"learning rate is 0\.01, params give 0\.5"):
        load(dvc_repo / "init", faster, data)


def test_the_folder_is_replaced_whole_and_a_failure_leaves_the_old_one(
    dvc_repo: Path, tmp_path: Path, tiny_params: Params
) -> None:
    model, params = _parent(tiny_params, tmp_path)
    warm = _warm(params, _cache(dvc_repo, model))
    init = dvc_repo / "models/init"
    materialise(warm.train.warm_start, init, repo_root=dvc_repo)
    before = {p.name: p.read_bytes() for p in init.iterdir()}
    with pytest.raises(WarmStartError, match="not in DVC's cache"):
        materialise(_warm(params, "0" * 32).train.warm_start, init, repo_root=dvc_repo)
    assert {p.name: p.read_bytes() for p in init.iterdir()} == before
    assert [p.name for p in init.parent.iterdir()] == ["init"]  # no temporary folder left
    # From scratch: the parent's model goes with the rest of the old folder.
    materialise(tiny_params.train.warm_start, init, repo_root=dvc_repo)
    assert sorted(p.name for p in init.iterdir()) == ["warm_start.json"]
