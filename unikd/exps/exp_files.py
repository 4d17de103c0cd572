"""Experiment files: a Python file that defines the experiment class named like the file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_exp_class(path: str | Path) -> type:
    """The experiment class of an experiment file: the class named like the file, imported once."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    name = path.stem
    module = sys.modules.get(name)
    if module is None or Path(module.__file__).resolve() != path:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    if not hasattr(module, name):
        raise AttributeError(f"experiment file {path} defines no class named {name}")
    return getattr(module, name)
