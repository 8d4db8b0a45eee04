"""pyproject.toml ships every top-level module: an installed `gapshape-server` or `gapshape-gui`
imports what a checkout imports, so a module added without its line would fail only there."""
from __future__ import annotations

import tomllib

from conftest import ROOT


def test_every_top_level_module_is_listed_in_py_modules():
    with open(ROOT / "pyproject.toml", "rb") as file:
        listed = set(tomllib.load(file)["tool"]["setuptools"]["py-modules"])
    on_disk = {path.stem for path in ROOT.glob("*.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] py-modules"
    assert listed - on_disk == set(), "py-modules names modules that are not there"
