"""`--exp_options key=value` overrides: dotted paths into an experiment's attributes and dicts.

Each value is checked against the type of the value it replaces (the attribute's annotation on
the experiment class, else the current value's type), so that `lr=abc` or
`model_config.head.score_threshold=high` fail when the command is read, not mid-training.
"""

from __future__ import annotations

import ast
import copy
import types
import typing
from typing import Any


def parse_value(text: str) -> Any:
    """A Python literal when the text is one (numbers, tuples, lists, booleans, None), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# Other names accepted for settings: `preset=small` sets `model_size` (a preset of `unikd.models.configs.PRESETS`);
# the distillation section `distill` (`unikd.exps.distillation.DistillSettings`) has short names.
OPTION_NAMES = {
    "preset": "model_size",
    "teacher_preset": "distill.teacher_preset",
    "teacher_model_size": "distill.teacher_preset",
    "allow_random_teacher": "distill.allow_random_teacher",
    "distill_weights": "distill.weights",
    "distill_terms": "distill.terms",
}
OPTION_PREFIXES = {"distill_weights.": "distill.weights."}  # distill_weights.feature=10 sets distill.weights.feature


def setting_path(key: str) -> str:
    """The dotted setting path that an option key names (OPTION_NAMES, OPTION_PREFIXES)."""
    for prefix, path in OPTION_PREFIXES.items():
        if key.startswith(prefix):
            return path + key.removeprefix(prefix)
    return OPTION_NAMES.get(key, key)


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """{attribute path: value} of `key=value` pairs (the last of a key wins); a clearer name (OPTION_NAMES)
    gives its attribute's key, and both names of one attribute is an error."""
    options, given_as = {}, {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--exp_options expects key=value, got {pair!r}")
        attribute = setting_path(key)
        if given_as.setdefault(attribute, key) != key:
            raise ValueError(f"--exp_options {given_as[attribute]} and {key} name the same setting ({attribute}); give one")
        options[attribute] = parse_value(value)
    return options


def apply_options(target: object, options: dict[str, Any]) -> None:
    """Set each dotted path on `target`; an unknown attribute or key, or a value of the wrong type, is an error."""
    annotations = _annotations(type(target))
    for key, value in options.items():
        path = setting_path(key)
        *parents, leaf = path.split(".")
        if parents:
            _own_copy(target, parents[0])
        node: Any = target
        walked = []
        for name in parents:
            node = _child(node, name, walked)
            walked.append(name)
            if node is None:  # e.g. `distill` of an experiment that distils from no teacher
                raise AttributeError(f"--exp_options {path}: {'.'.join(walked)} is not set (None) in this experiment")
        if isinstance(node, dict):
            if leaf not in node:
                raise KeyError(f"--exp_options {path}: {'.'.join(walked) or 'experiment'} has no key {leaf!r}; known: {sorted(node)}")
            node[leaf] = checked_value(path, value, node[leaf], None)
        else:
            if not hasattr(node, leaf):
                raise AttributeError(f"--exp_options {path}: {type(node).__name__} has no attribute {leaf!r}")
            annotation = annotations.get(leaf) if node is target else None
            setattr(node, leaf, checked_value(path, value, getattr(node, leaf), annotation))


def checked_value(path: str, value: Any, current: Any, annotation: Any) -> Any:
    """`value` converted to the type it replaces (an int where a float was, a list where a tuple was),
    or a TypeError naming the option, the expected type and the current value."""
    expected = annotation if annotation is not None else (Any if current is None else type(current))
    ok, converted = _conform(value, expected)
    if not ok:
        raise TypeError(
            f"--exp_options {path}={value!r}: expected {_type_name(expected)} "
            f"(the current value is {current!r}), got {type(value).__name__}"
        )
    return converted


def _conform(value: Any, expected: Any) -> tuple[bool, Any]:
    if expected is Any or expected is object:
        return True, value
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        for member in args:
            ok, converted = _conform(value, member)
            if ok:
                return True, converted
        return False, value
    if expected is type(None):
        return value is None, value
    if expected is bool:
        return isinstance(value, bool), value
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if expected in (tuple, list) or origin in (tuple, list):
        container = origin or expected
        if not isinstance(value, tuple | list):
            return False, value
        items = list(value)
        if args:
            fixed = args if not (len(args) == 2 and args[1] is Ellipsis) else (args[0],) * len(items)
            if len(fixed) != len(items):
                return False, value
            for i, (item, item_type) in enumerate(zip(items, fixed, strict=True)):
                ok, items[i] = _conform(item, item_type)
                if not ok:
                    return False, value
        return True, container(items)
    if origin is dict or expected is dict:
        return isinstance(value, dict), value
    if origin is type:
        return isinstance(value, type), value
    if isinstance(expected, type):
        return isinstance(value, expected), value
    return True, value  # an annotation this check does not model (a TypeVar, a Protocol)


def _type_name(expected: Any) -> str:
    return expected.__name__ if isinstance(expected, type) else str(expected).replace("typing.", "")


def _annotations(cls: type) -> dict[str, Any]:
    """The class's attribute annotations over its MRO, resolved; those that do not resolve are left out."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        try:
            hints.update(typing.get_type_hints(klass))
        except Exception:  # an unresolvable annotation in a user's class: fall back to value types
            continue
    return hints


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
