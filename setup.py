"""Wheels carry the SQL files and model manifests inside the package (vectorize/paths.py
looks for them there when the package is not run from a source checkout)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        package = Path(self.build_lib) / "vectorize"
        shutil.copytree(ROOT / "sql", package / "_sql", dirs_exist_ok=True)
        models = package / "_models"
        models.mkdir(parents=True, exist_ok=True)
        for manifest in (ROOT / "models").glob("*.json"):
            shutil.copy2(manifest, models / manifest.name)


setup(cmdclass={"build_py": BuildWithData})
