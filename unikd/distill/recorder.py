"""Record intermediate outputs of any nn.Module by module path (forward hooks)."""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle


class FeatureRecorder:
    """Stores the output of each named submodule on every forward.

    `module_paths` are dotted names from `model.named_modules()` (e.g. "decoder.neck",
    "backbone.blocks.0"). After a forward, `recorder[path]` (or `recorder.outputs[path]`) is
    the latest output of that module, graph included (so a student's features keep their
    gradient). A module called several times in one forward keeps its last output.
    Use as a context manager, or call `remove()` to detach the hooks.
    """

    def __init__(self, model: nn.Module, module_paths: list[str]) -> None:
        modules = dict(model.named_modules())
        unknown = [path for path in module_paths if path not in modules]
        if unknown:
            hints = {
                path: difflib.get_close_matches(path, list(modules), n=5, cutoff=0.4) for path in unknown
            }
            raise KeyError(f"unknown module paths {unknown}; closest names: {hints}")
        self.outputs: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = [
            modules[path].register_forward_hook(self._hook(path)) for path in module_paths
        ]

    def _hook(self, path: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            self.outputs[path] = output

        return record

    def __getitem__(self, path: str) -> Any:
        if path not in self.outputs:
            raise KeyError(f"nothing recorded for {path!r}; recorded: {sorted(self.outputs)}")
        return self.outputs[path]

    def clear(self) -> None:
        """Forget the recorded outputs (hooks stay)."""
        self.outputs.clear()

    def remove(self) -> None:
        """Remove every hook; recorded outputs stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
