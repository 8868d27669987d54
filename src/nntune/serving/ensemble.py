"""Exporting an ensemble experiment (``nntune ensemble``): one model whose raw-column inputs
feed every member's own preprocessing and network, and whose output is the average of the
members' outputs (class probabilities, or values in the target's units), as the ensemble
stage scored it. The members come from the experiment's own ``models/ensemble`` output."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nntune.errors import NntuneError
from nntune.serving.preprocessing import PreprocessingSpec

if TYPE_CHECKING:
    import keras

MEMBERS_DIR = "models/ensemble"
INFO = f"{MEMBERS_DIR}/ensemble.json"
METRICS = "metrics/ensemble.json"


class EnsembleExportError(NntuneError):
    pass


@dataclass(frozen=True)
class MemberSource:
    experiment: str
    model: bytes  # its models/model.keras
    meta: dict[str, Any]  # its data/prepared/meta.json


def member_count(params_text: bytes) -> int:
    """How many members the params list (0: not an ensemble)."""
    try:
        raw = yaml.safe_load(params_text.decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return 0
    members = (raw.get("ensemble") or {}).get("members") if isinstance(raw, dict) else None
    return len(members) if isinstance(members, list) else 0


def ensemble_paths(count: int) -> list[str]:
    """The files an ensemble's export reads, relative to the project root."""
    paths = [INFO, METRICS]
    for i in range(count):
        paths += [f"{MEMBERS_DIR}/member_{i}/model.keras", f"{MEMBERS_DIR}/member_{i}/meta.json"]
    return paths


def member_sources(files: Mapping[str, bytes], where: str) -> tuple[MemberSource, ...]:
    info = json.loads(files[INFO].decode("utf-8"))
    members = []
    for i, record in enumerate(info.get("members", [])):
        folder = f"{MEMBERS_DIR}/member_{i}"
        meta = json.loads(files[f"{folder}/meta.json"].decode("utf-8"))
        members.append(
            MemberSource(str(record["experiment"]), files[f"{folder}/model.keras"], meta)
        )
    if not members:
        raise EnsembleExportError(
            f"{where}{INFO}: lists no members although params.yaml does; run `dvc repro ensemble`"
        )
    return tuple(members)


def member_specs(members: tuple[MemberSource, ...], label: str) -> list[PreprocessingSpec]:
    """Each member's preprocessing; all must read the same raw columns (the ensemble stage
    checked the target, classes and test split)."""
    specs = [
        PreprocessingSpec.from_meta(m.meta, f"{label}: member {m.experiment}'s meta.json")
        for m in members
    ]
    first = specs[0]
    for member, spec in zip(members[1:], specs[1:], strict=True):
        if sorted(spec.columns) != sorted(first.columns):
            raise EnsembleExportError(
                f"{label}: member {member.experiment} reads the columns "
                f"{', '.join(spec.columns)}, member {members[0].experiment} "
                f"{', '.join(first.columns)}; an exported ensemble takes one set of raw "
                "columns: ensemble experiments whose data.features and data.exclude agree"
            )
    return specs


def averaged_model(
    members: tuple[MemberSource, ...],
    specs: list[PreprocessingSpec],
    names: dict[str, str],
    member_model: Any,
) -> keras.Model:
    """One model: the raw columns in, each member as ``member_model(net, spec, names,
    name)`` builds it (``export.raw_input_model``), the members' outputs averaged."""
    import keras  # imported by the caller already (nntune.serving.export)

    first = specs[0]
    inputs: dict[str, keras.KerasTensor] = {}
    for numeric in first.numeric:
        inputs[numeric.column] = keras.Input((), dtype="float32", name=names[numeric.column])
    for categorical in first.categorical:
        inputs[categorical.column] = keras.Input((), dtype="string", name=names[categorical.column])
    outputs = []
    with tempfile.TemporaryDirectory(prefix="nntune-export-") as scratch:
        for i, (member, spec) in enumerate(zip(members, specs, strict=True)):
            path = Path(scratch) / f"member_{i}.keras"  # Keras reads a .keras file by its name
            path.write_bytes(member.model)
            net = keras.saving.load_model(path, compile=False)
            model = member_model(net, spec, names, f"member_{i}")
            outputs.append(model({names[c]: inputs[c] for c in spec.columns}))
    averaged = keras.layers.Average(name="average")(outputs)
    named = {names[column]: tensor for column, tensor in inputs.items()}
    return keras.Model(named, averaged, name="nntune_ensemble")


@dataclass(frozen=True)
class PredictingMember:
    """A member as ``nntune predict`` runs it: its model file and its preprocessing."""

    experiment: str
    model_path: Path
    spec: PreprocessingSpec


def written_members(
    members: tuple[MemberSource, ...], folder: Path, label: str
) -> tuple[PredictingMember, ...]:
    """The members' model files written into ``folder`` (a scratch folder)."""
    specs = member_specs(members, label)
    written = []
    for i, (member, spec) in enumerate(zip(members, specs, strict=True)):
        path = folder / f"member_{i}.keras"  # Keras reads a .keras file by its name
        path.write_bytes(member.model)
        written.append(PredictingMember(member.experiment, path, spec))
    return tuple(written)


def workspace_members(root: Path, count: int, label: str) -> tuple[PredictingMember, ...]:
    """The members the workspace's ensemble stage left in ``models/ensemble``."""
    files = {}
    for path in ensemble_paths(count):
        if path.endswith(".keras"):
            continue  # read in place
        if not (root / path).is_file():
            raise EnsembleExportError(f"{root / path}: not found; run `dvc repro` first")
        files[path] = (root / path).read_bytes()
    info = json.loads(files[INFO].decode("utf-8"))
    members = []
    for i, record in enumerate(info.get("members", [])):
        folder = f"{MEMBERS_DIR}/member_{i}"
        meta = json.loads(files[f"{folder}/meta.json"].decode("utf-8"))
        members.append(MemberSource(str(record["experiment"]), b"", meta))
    specs = member_specs(tuple(members), label)
    return tuple(
        PredictingMember(m.experiment, root / MEMBERS_DIR / f"member_{i}" / "model.keras", s)
        for i, (m, s) in enumerate(zip(members, specs, strict=True))
    )
