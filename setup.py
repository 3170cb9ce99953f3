"""Wheels carry the model manifests inside the package (vectorize/paths.py looks for them there
when the package is not run from a source checkout); the SQL is package data already."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        models = Path(self.build_lib) / "vectorize" / "_models"
        models.mkdir(parents=True, exist_ok=True)
        for manifest in (ROOT / "models").glob("*.json"):
            shutil.copy2(manifest, models / manifest.name)


setup(cmdclass={"build_py": BuildWithData})
