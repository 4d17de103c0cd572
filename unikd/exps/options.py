"""`--exp_options key=value` overrides: dotted paths into an experiment's attributes and dicts."""

from __future__ import annotations

import ast
import copy
from typing import Any


def parse_value(text: str) -> Any:
    """A Python literal when the text is one (numbers, tuples, lists, booleans, None), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--exp_options expects key=value, got {pair!r}")
        options[key] = parse_value(value)
    return options


def apply_options(target: object, options: dict[str, Any]) -> None:
    """Set each dotted path on `target`; an unknown attribute or key is an error, never a new field."""
    for path, value in options.items():
        *parents, leaf = path.split(".")
        if parents:
            _own_copy(target, parents[0])
        node: Any = target
        walked = []
        for name in parents:
            node = _child(node, name, walked)
            walked.append(name)
        if isinstance(node, dict):
            if leaf not in node:
                raise KeyError(f"--exp_options {path}: {'.'.join(walked) or 'experiment'} has no key {leaf!r}; known: {sorted(node)}")
            node[leaf] = value
        else:
            if not hasattr(node, leaf):
                raise AttributeError(f"--exp_options {path}: {type(node).__name__} has no attribute {leaf!r}")
            setattr(node, leaf, value)


def _own_copy(target: object, name: str) -> None:
    """Give `target` its own deep copy of a class-level attribute before a dotted path edits inside it."""
    if not isinstance(target, dict) and hasattr(target, name) and name not in vars(target):
        setattr(target, name, copy.deepcopy(getattr(target, name)))


def _child(node: Any, name: str, walked: list[str]) -> Any:
    if isinstance(node, dict):
        if name not in node:
            raise KeyError(f"--exp_options: {'.'.join(walked) or 'experiment'} has no key {name!r}; known: {sorted(node)}")
        return node[name]
    if not hasattr(node, name):
        raise AttributeError(f"--exp_options: {type(node).__name__} has no attribute {name!r}")
    return getattr(node, name)
