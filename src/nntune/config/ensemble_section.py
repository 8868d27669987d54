"""``params.yaml``'s ``ensemble`` section: the experiments whose models an ensemble averages.

Each member is named by its experiment and by the md5s dvc.lock recorded for its trained
model (``models/model.keras``) and its prepared data (``data/prepared``, whose meta.json
holds the fitted preprocessing), as a warm start names its parent: the ensemble stage takes
exactly those objects out of DVC's cache, so the ensemble's lineage is content hashes and
``dvc repro`` rebuilds it from its params alone. ``nntune ensemble --top K`` fills it in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nntune.config.reader import SectionReader

MD5 = re.compile(r"[0-9a-f]{32}")
MIN_MEMBERS = 2


@dataclass(frozen=True)
class EnsembleMember:
    experiment: str
    model: str  # md5 of its models/model.keras
    prepared: str  # md5 of its data/prepared folder (DVC's ``<md5>.dir``)

    def record(self) -> dict[str, str]:
        return {"experiment": self.experiment, "model": self.model, "prepared": self.prepared}


@dataclass(frozen=True)
class EnsembleParams:
    members: tuple[EnsembleMember, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.members)


def parse_ensemble(s: SectionReader) -> EnsembleParams:
    value = s.take("members")
    if value is None and s.failed({"members"}):
        return EnsembleParams()
    if not isinstance(value, list):
        s.problem("members", value, "must be a list ([] = no ensemble)")
        return EnsembleParams()
    members = []
    for i, item in enumerate(value):
        member = _member(item)
        if member is None:
            s.problem(
                f"members[{i}]",
                item,
                "must be a mapping {experiment: NAME, model: MD5, prepared: MD5.dir} (the md5s "
                "dvc.lock records for that experiment's models/model.keras and data/prepared); "
                "`nntune ensemble --top K` writes them",
            )
            return EnsembleParams()
        members.append(member)
    if members and len(members) < MIN_MEMBERS:
        s.problem("members", value, f"must list at least {MIN_MEMBERS} experiments, or none")
    names = [m.experiment for m in members]
    if len(set(names)) != len(names):
        s.problem("members", value, "lists an experiment twice")
    return EnsembleParams(tuple(members))


def _member(item: Any) -> EnsembleMember | None:
    if not isinstance(item, dict) or set(item) != {"experiment", "model", "prepared"}:
        return None
    experiment, model, prepared = item["experiment"], item["model"], item["prepared"]
    if not isinstance(experiment, str) or not experiment.strip():
        return None
    if not isinstance(model, str) or not MD5.fullmatch(model):
        return None
    if not isinstance(prepared, str) or not MD5.fullmatch(prepared.removesuffix(".dir")):
        return None
    if not prepared.endswith(".dir"):
        return None
    return EnsembleMember(experiment, model, prepared)
