"""The distillation settings an ablation study compares: each variant is a set of `--exp_options` for its
distilled students, written as `feature=10 relation=40` (a key that is no setting of the distillation
experiment names a term's weight: `feature=10` is `distill_weights.feature=10`) or with full dotted options.
Variants come from the command line (`--variants`) or a file (`--variants_file`): a JSON list (each item a
string or a list of options), else text with one variant per line (blank lines and `#` comments skipped)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unikd.exps.base_exp import BaseExp
from unikd.exps.options import OPTION_NAMES, parse_options

DEFAULT_NAME = "distilled"  # the one variant of a study without variants: --distill_options alone


class VariantError(ValueError):
    """A variant (or variants file) that cannot be read or whose options the experiment refuses."""


@dataclass(frozen=True)
class Variant:
    """A variant's name (its text as written) and its options with the short forms expanded."""

    name: str
    options: tuple[str, ...]


def expand_option(option: str, exp_class: type[BaseExp]) -> str:
    """`key=value` with a key that is no setting of `exp_class` (nor another name of one) ->
    `distill_weights.key=value`."""
    key, sep, value = option.partition("=")
    if not sep or not key:
        raise ValueError(f"expected key=value, got {option!r}")
    if "." in key or key in OPTION_NAMES or hasattr(exp_class, key):
        return option
    return f"distill_weights.{key}={value}"


def parse_variant(text: str, exp_class: type[BaseExp]) -> Variant:
    """A variant from its text (options separated by spaces)."""
    options = text.split()
    if not options:
        raise VariantError("--variants: an empty variant; each is one or more key=value options")
    try:
        expanded = tuple(expand_option(option, exp_class) for option in options)
    except ValueError as error:
        raise VariantError(f"--variants {text!r}: {error}") from None
    parse_options(list(expanded))
    return Variant(" ".join(options), expanded)


def read_variants_file(path: Path) -> list[str]:
    """The variants' texts of a variants file (module doc)."""
    if not path.is_file():
        raise VariantError(f"--variants_file {path}: no such file")
    text = path.read_text()
    if path.suffix != ".json":
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return [line for line in lines if line]
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise VariantError(f"--variants_file {path}: not JSON ({error})") from None
    if not isinstance(items, list) or not all(
        isinstance(item, str) or (isinstance(item, list) and all(isinstance(o, str) for o in item)) for item in items
    ):
        raise VariantError(f"--variants_file {path}: expected a JSON list of variants, each a string or a list of "
                         "key=value strings")
    return [item if isinstance(item, str) else " ".join(item) for item in items]


def check_options(what: str, exp_class: type[BaseExp], options: list[str], data_root: Path) -> None:
    """Build the distillation experiment with `options`, as a run will, so that an unknown term or a value of
    the wrong type fails before any training; `what` names the options in the error."""
    try:
        exp_class(data_root=str(data_root), exp_options=parse_options(options))
    except (KeyError, AttributeError, TypeError, ValueError) as error:
        message = error.args[0] if error.args else type(error).__name__  # a KeyError's str() quotes it
        raise VariantError(f"{what}: {message}") from None
