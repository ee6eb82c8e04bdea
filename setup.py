"""Build hook: a wheel carries the kit's data (environments, templates, notebooks) in ``kit/_data``.

In a checkout (and an editable install) the package reads them from the repository's top-level folders;
an installed wheel has no repository beside it, so ``build_py`` copies them into the package. Everything
else about the build is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("environments", "templates", "notebooks")  # kit.paths.SHIPPED_DATA


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        here = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "kit" / "_data"
        for name in DATA:
            if not (here / name).is_dir():
                raise SystemExit(f"cannot build the kit: its data folder {name}/ is missing from {here}")
            shutil.copytree(here / name, target / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))


setup(cmdclass={"build_py": BuildWithData})
