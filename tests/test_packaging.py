"""What an installed sink (not an editable checkout) contains: every package of the tree is
listed in pyproject.toml, so a non-editable install does not lose a subpackage."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_the_tree_is_installed():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]
    listed = set(setup["packages"])
    in_tree = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "sink").rglob("__init__.py") if "__pycache__" not in p.parts}
    assert in_tree - listed == set(), "packages missing from pyproject.toml"
    mapped = {name for name in listed if name.startswith("sink.") and name not in in_tree}
    assert mapped == {"sink.rulesdata", "sink.migrations", "sink.migrations.versions"}
    for name in mapped:
        assert (ROOT / setup["package-dir"][name] / "__init__.py").exists()
