"""The host-side Ansible modules, loaded from playbooks/library as plain Python modules for
the tests of their pure parts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

LIBRARY = Path(__file__).parents[2] / "playbooks" / "library"


def load(name: str) -> ModuleType:
    """playbooks/library/NAME.py, freshly executed."""
    spec = importlib.util.spec_from_file_location(name, LIBRARY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
