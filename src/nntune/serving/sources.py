"""Where ``nntune export`` reads a model from: the workspace (what ``dvc repro`` left) or one
experiment's commit and DVC's cache; an ensemble experiment's members instead of a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from nntune.errors import NntuneError
from nntune.serving.card import ExportSource
from nntune.serving.ensemble import INFO as ENSEMBLE_INFO
from nntune.serving.ensemble import METRICS as ENSEMBLE_METRICS
from nntune.serving.ensemble import ensemble_paths, member_count, member_sources
from nntune.serving.predict import META_PATH, MODEL_PATH, PARAMS_PATH

TRAIN_METRICS = "metrics/train.json"
EVALUATE_METRICS = "metrics/evaluate.json"
TRAIN_RUN = "reports/train_run.json"  # the versions that trained the model
RECORD_PATHS = (MODEL_PATH, META_PATH, TRAIN_METRICS, EVALUATE_METRICS, TRAIN_RUN)


class ExportError(NntuneError):
    pass


def workspace_source(root: str | Path, params_file: str | Path | None = None) -> ExportSource:
    """The workspace's model (what ``dvc repro`` left), the files that describe it, and the
    params file (default: the project's params.yaml)."""
    root = Path(root)
    params = _params_bytes(Path(params_file or root / PARAMS_PATH))
    files: dict[str, bytes] = {}
    for path in _record_paths(params):
        if not (root / path).is_file():
            raise ExportError(
                f"{root / path}: not found; run `dvc repro` first (or pass --experiment NAME "
                "to export a finished experiment's model)"
            )
        files[path] = (root / path).read_bytes()
    files[PARAMS_PATH] = params
    from nntune import experiments

    with experiments.open_repo(root) as repo:
        commit = experiments.baseline_rev(repo)
    return _source(files, None, commit)


def experiment_source(
    root: str | Path, name: str, params_file: str | Path | None = None
) -> ExportSource:
    """Experiment ``name``'s model, records and params.yaml (``params_file`` replaces the
    latter), read through the DVC gateway from git and DVC's cache: nothing in the project
    is written."""
    from nntune import experiments

    own = experiments.read_outputs(root, name, [PARAMS_PATH])[PARAMS_PATH]
    files = experiments.read_outputs(root, name, _record_paths(own))
    files[PARAMS_PATH] = _params_bytes(Path(params_file)) if params_file else own
    with experiments.open_repo(root) as repo:
        commit = experiments.experiment_commits(repo, experiments.baseline_rev(repo)).get(name)
    return _source(files, name, commit)


def _params_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise ExportError(
            f"{path}: params file not found; run from the project root or pass --params"
        )
    return path.read_bytes()


def _record_paths(params: bytes) -> list[str]:
    """What an export reads: the model and its records, or an ensemble's members."""
    count = member_count(params)
    return ensemble_paths(count) if count else list(RECORD_PATHS)


def _source(files: dict[str, bytes], experiment: str | None, commit: str | None) -> ExportSource:
    where = f"{experiment}:" if experiment else ""
    if ENSEMBLE_INFO in files:
        members = member_sources(files, where)
        return ExportSource(
            model=b"",
            meta=members[0].meta,
            params=_yaml(files, PARAMS_PATH, where),
            train_metrics={},
            evaluate_metrics=_json(files, ENSEMBLE_METRICS, where),
            train_run={},
            experiment=experiment,
            commit=commit,
            members=members,
        )
    return ExportSource(
        model=files[MODEL_PATH],
        meta=_json(files, META_PATH, where),
        params=_yaml(files, PARAMS_PATH, where),
        train_metrics=_json(files, TRAIN_METRICS, where),
        evaluate_metrics=_json(files, EVALUATE_METRICS, where),
        train_run=_json(files, TRAIN_RUN, where),
        experiment=experiment,
        commit=commit,
    )


def _json(files: dict[str, bytes], path: str, where: str) -> dict[str, Any]:
    try:
        loaded = json.loads(files[path].decode("utf-8"))
    except ValueError as exc:
        raise ExportError(f"{where}{path}: not valid JSON ({exc}); run `dvc repro`") from None
    if not isinstance(loaded, dict):
        raise ExportError(f"{where}{path}: expected a JSON object; run `dvc repro`")
    return loaded


def _yaml(files: dict[str, bytes], path: str, where: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(files[path].decode("utf-8"))
    except yaml.YAMLError as exc:
        raise ExportError(f"{where}{path}: not valid YAML ({exc})") from None
    return loaded if isinstance(loaded, dict) else {}
