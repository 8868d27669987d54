"""Build hook (named in pyproject.toml, not used at run time): a non-editable wheel carries
the pipeline files that ``nntune init`` copies into a new project, taken from the source
tree's root at build time so that they exist once in the repository.

An editable install needs none of this: ``nntune init`` then reads them from the checkout.
Wheels are built from a checkout (``pip install .`` / ``pip wheel .``); there is no sdist.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parents[3]  # src/nntune/scaffold/build.py -> the checkout
PACKAGED = "pipeline"  # folder inside the installed package
PIPELINE_FILES = ("dvc.yaml", "params.yaml", "grid.yaml", ".dvcignore")
STAGES = "stages"


class BuildWithPipeline(build_py):  # type: ignore[misc]  # setuptools is untyped here
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        missing = [n for n in (*PIPELINE_FILES, STAGES) if not (ROOT / n).exists()]
        if missing:
            raise FileNotFoundError(
                f"building nntune needs the pipeline files at the checkout's root; {ROOT} "
                f"lacks {', '.join(missing)}: build from a git clone"
            )
        target = Path(self.build_lib) / "nntune" / PACKAGED
        (target / STAGES).mkdir(parents=True, exist_ok=True)
        for name in PIPELINE_FILES:
            shutil.copy2(ROOT / name, target / name)
        for script in sorted((ROOT / STAGES).glob("*.py")):
            shutil.copy2(script, target / STAGES / script.name)
