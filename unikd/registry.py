"""`Registry`: the named choices of one kind (heads, fusers, depth nets, camera backbones, presets, checkpoint
formats, term kinds, evaluation tasks), each registered once where it is defined.

A registry is a read-only mapping name -> choice in the order of registration; `lookup` is the lookup a
configuration makes: an unknown name is an error that names the setting and lists the registered names. It
sits below every package so that each one can keep its registries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Choices of one `kind` by name; `setting` is what names them in a configuration (for errors)."""

    def __init__(self, kind: str, setting: str) -> None:
        self.kind = kind
        self.setting = setting
        self._choices: dict[str, T] = {}

    def add(self, name: str, choice: T) -> T:
        """Register `choice` as `name` (a name is registered once); returns the choice."""
        if name in self._choices:
            known = getattr(self._choices[name], "__name__", None)
            suffix = f" ({known})" if known else ""
            raise ValueError(f"{self.kind} {name!r} is already registered{suffix}")
        self._choices[name] = choice
        return choice

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated class or function as `name`."""
        return lambda choice: self.add(name, choice)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._choices))

    def lookup(self, name: str) -> T:
        """The choice registered as `name`; an unknown name is a ValueError that lists the registered ones."""
        if name not in self._choices:
            raise ValueError(f"{self.setting} must be one of {self.names}, got {name!r}")
        return self._choices[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """The choice `name` (a class or builder) called with these arguments."""
        return self.lookup(name)(*args, **kwargs)

    def __getitem__(self, name: str) -> T:
        return self._choices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)
