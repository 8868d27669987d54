"""Warm start: continue the model a parent experiment saved (successive halving promotes a
trial by training its model further instead of from scratch).

The parent is named in params (``train.warm_start``) by experiment and by the md5 of its
``models/last.keras`` (its last epoch's state, optimiser included). The warmstart stage
copies exactly that file out of DVC's cache, so the continued experiment's lineage is a
content hash (its dvc.lock records it as a dependency of train) and ``dvc repro`` rebuilds
it from its params alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nntune.config.sections import Params, WarmStartParams
from nntune.errors import NntuneError
from nntune.stage import artifacts

if TYPE_CHECKING:
    import keras

    from nntune.stage.data import Prepared
    from nntune.stage.pretrain import Pretrained

INFO_FILE = "warm_start.json"
MODEL_FILE = "model.keras"


class WarmStartError(NntuneError):
    pass


def materialise(warm: WarmStartParams, out_dir: str | Path, repo_root: str | Path = ".") -> None:
    """Write ``out_dir`` as a whole (``artifacts.atomic_dir``): the parent's model out of
    DVC's cache and what it is; only ``{"enabled": false}`` when training starts from
    scratch, without importing DVC or Keras. A kill or a corrupt cache object leaves the
    folder as it was."""
    info: dict[str, Any] = {"enabled": warm.enabled}
    with artifacts.atomic_dir(out_dir) as tmp_dir:
        if warm.enabled:
            source = cached_file(warm.model_md5, repo_root)
            if source is None:
                raise WarmStartError(
                    f"train.warm_start: the model of experiment {warm.experiment} "
                    f"(md5 {warm.model_md5}) is not in DVC's cache; fetch it with "
                    f"`dvc exp pull <remote> {warm.experiment}` and `dvc pull`, or set "
                    'train.warm_start.experiment: "" to train from scratch'
                )
            model = tmp_dir / MODEL_FILE
            shutil.copyfile(source, model)
            found = artifacts.file_md5(model)
            if found != warm.model_md5:
                raise WarmStartError(
                    f"{source}: DVC's cache holds md5 {found} under {warm.model_md5}; the "
                    "cache is corrupt: remove that object and pull it again"
                )
            info.update(experiment=warm.experiment, model_md5=warm.model_md5, epochs=warm.epochs)
        artifacts.write_json(tmp_dir / INFO_FILE, info)


def cached_file(md5: str, repo_root: str | Path = ".") -> Path | None:
    """Where DVC's cache (of the repo at ``repo_root``: inside a queued experiment, its
    config points at the main project's cache) keeps the file with this md5, if it does."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        path = Path(repo.cache.local.oid_to_path(md5))
    return path if path.is_file() else None


def load(init_dir: str | Path, params: Params, data: Prepared) -> keras.Model | None:
    """The parent's model, compiled with its optimiser state, ready to continue; ``None``
    when training starts from scratch. Refuses a model ``params`` would not build."""
    init_dir = Path(init_dir)
    info_path = init_dir / INFO_FILE
    if not info_path.is_file():
        raise WarmStartError(f"{info_path}: not found; run the warmstart stage (dvc repro)")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    warm = params.train.warm_start
    if not info.get("enabled"):
        if warm.enabled:
            raise WarmStartError(f"{init_dir} is empty but train.warm_start is set; dvc repro")
        return None
    if info.get("model_md5") != warm.model_md5:
        raise WarmStartError(
            f"{init_dir} holds {info.get('experiment')}'s model (md5 {info.get('model_md5')}) "
            f"but params name md5 {warm.model_md5}; re-run the warmstart stage (dvc repro)"
        )
    import keras

    from nntune.stage.model import model_for

    net = keras.saving.load_model(init_dir / MODEL_FILE)
    fresh = model_for(params, data)
    _check_same_model(net, fresh, warm.experiment, params)
    return net


def starting_model(
    init_dir: str | Path, params: Params, data: Prepared, pretrained: Pretrained
) -> tuple[keras.Model, list[str]]:
    """What train starts from: the parent's model when warm-starting (nothing frozen),
    else the model from params, initialised from the encoder when pretrained."""
    parent = load(init_dir, params, data)
    if parent is not None:
        return parent, []
    from nntune.stage.pretrain import initialised_model

    return initialised_model(params, data, pretrained)


def _check_same_model(net: keras.Model, fresh: keras.Model, parent: str, params: Params) -> None:
    """Continuing only makes sense with the parent's architecture and optimiser; anything
    else would be a different experiment wearing the parent's history."""
    import keras

    problems = []
    mine = [(w.path, tuple(w.shape)) for w in fresh.weights if "input_minmax" not in w.path]
    theirs = [(w.path, tuple(w.shape)) for w in net.weights if "input_minmax" not in w.path]
    if mine != theirs:
        problems.append("its layers differ from what params.model builds")
    optimizer = net.optimizer
    if optimizer is None or type(optimizer).__name__.lower() != params.train.optimizer:
        problems.append(f"its optimizer is not {params.train.optimizer}")
    elif not params.train.scheduled:  # a schedule leaves the rate of the parent's last epoch
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        wanted = params.train.effective_learning_rate
        if abs(rate - wanted) > 1e-6 * max(abs(wanted), 1e-12):
            problems.append(f"its learning rate is {rate:g}, params give {wanted:g}")
    if problems:
        raise WarmStartError(
            f"train.warm_start.experiment {parent}: cannot continue its model: "
            + "; ".join(problems)
            + ". A warm start must keep the parent's model and train params (only "
            "max_epochs may grow)"
        )
