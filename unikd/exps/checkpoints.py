"""Checkpoints on disk: written atomically, read with errors that say what the file is and what to do.

Every checkpoint an experiment writes carries `unikd` metadata (experiment class, model size,
modalities, dataset version), so that a checkpoint loaded into the wrong experiment is described
by what it is and which flags would load it, instead of by hundreds of key names.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from unikd.interop import detector_state
from unikd.models.camera.depth_pretrain import CAMERA_INIT_PARTS

METADATA_KEY = "unikd"
MAX_GROUPS = 8  # module groups listed in a mismatch summary


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the target folder, fsyncs it and renames it over the
    final name, so that a full disk or a crash never leaves a partial file under that name.
    `on_saved(path)` runs after each completed save."""

    def __init__(self, on_saved: Callable[[Path], None] | None = None) -> None:
        super().__init__()
        self.on_saved = on_saved

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        check_finite_weights(checkpoint, Path(path))
        save_atomically(checkpoint, Path(path))
        if self.on_saved is not None:
            self.on_saved(Path(path))


class NonFiniteWeights(FloatingPointError):
    """A checkpoint about to be written holds non-finite weights."""


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating tensors of `state` that hold NaN or inf."""
    return [key for key, value in state.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())]


def check_finite_weights(checkpoint: Mapping[str, Any], path: Path) -> None:
    """A NonFiniteWeights error, instead of a save, when the `state_dict` of `checkpoint` has a non-finite
    tensor: it names them, the step, and the newest checkpoint of the folder (the last finite state)."""
    bad = nonfinite_tensors(checkpoint.get("state_dict") or {})
    if not bad:
        return
    last = path.parent / "last.ckpt"
    resume = f"resume from the last finite checkpoint with --ckpt_path {last}" if last.is_file() else "no checkpoint was saved before"
    raise NonFiniteWeights(
        f"not saving {path}: {len(bad)} tensors of the model are non-finite at epoch {checkpoint.get('epoch')} step "
        f"{checkpoint.get('global_step')} (e.g. {', '.join(bad[:3])}): training diverged (lower lr, check the data); "
        f"{resume}"
    )


PARTIAL_GLOB = ".*.partial"  # save_atomically's temporary files


def remove_partial_checkpoints(folder: Path) -> None:
    """Remove the temporary files that an interrupted save (a killed process) left in `folder`; call it only
    while holding the folder's run lock (no save is under way)."""
    for partial in folder.glob(PARTIAL_GLOB):
        partial.unlink(missing_ok=True)


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save into `path` through a temporary file beside it and one rename. A full disk is a
    CheckpointError that says so and names the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; a checkpoint is not
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(error):
            raise CheckpointError(
                f"disk full: could not write checkpoint {path.name} in {path.parent} (no space left on the device; "
                f"{shutil.disk_usage(path.parent).free:,} bytes free now); free space or pass another --output_root, "
                "then resume from the newest checkpoint there (the ones already written are intact)"
            ) from error
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def _disk_full(error: BaseException) -> bool:
    """Whether `error` or an error in its chain is ENOSPC (torch reports it as a RuntimeError caused by it)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_checkpoint(path: str | os.PathLike, role: str = "checkpoint", trusted: bool = False) -> dict[str, Any]:
    """The checkpoint at `path`: tensors and plain data only (nothing in it runs code), unless
    `trusted`, for a file whose Python objects (another framework's training state) the user vouches for.

    A missing, unreadable or truncated file is a CheckpointError that names it, says what was
    expected and lists the other checkpoints in its folder.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{role} {path} does not exist{_others(path)}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise CheckpointError(f"{role} {path} could not be read: {error}{_others(path)}") from error
        raise CheckpointError(
            f"{role} {path} holds Python objects besides tensors (e.g. another framework's training state), "
            "which only an unrestricted load can read, and such a load runs code from the file: if you trust "
            "it, convert it once with `python tools/convert_checkpoint.py SRC --out DST --trust-source`"
        ) from error
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        size = path.stat().st_size
        raise CheckpointError(
            f"{role} {path} ({size:,} bytes) could not be read as a PyTorch checkpoint: it is truncated, "
            f"corrupt or not a checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:200]}){_others(path)}"
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{role} {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return dict(checkpoint)


def _others(path: Path) -> str:
    """'; other checkpoints in <folder>: ...' (newest first), or '' when there are none."""
    folder = path.parent
    if not folder.is_dir():
        return ""
    others = sorted(
        (p for p in folder.glob("*.ckpt") if p.name != path.name and p.is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    if not others:
        return ""
    listed = ", ".join(
        f"{p.name} ({datetime.fromtimestamp(p.stat().st_mtime):%Y-%m-%d %H:%M})" for p in others[:5]
    )
    more = f" and {len(others) - 5} more" if len(others) > 5 else ""
    return f"; other checkpoints in {folder}: {listed}{more}"


def checkpoint_metadata(exp: Any) -> dict[str, Any]:
    """What a checkpoint of `exp` records about the experiment that wrote it."""
    return {
        "experiment": type(exp).__name__,
        "model_size": exp.model_size,
        "modalities": list(exp.modalities),
        "version": exp.version,
    }


def describe_checkpoint(checkpoint: Mapping[str, Any]) -> str:
    """'a <experiment> checkpoint (model_size ..., modalities ...)' from its metadata, '' when it has none."""
    meta = checkpoint.get(METADATA_KEY)
    if not isinstance(meta, Mapping):
        hyper = checkpoint.get("hyper_parameters") or {}
        size = (hyper.get("exp_options") or {}).get("model_size")
        return f"a checkpoint trained with model_size={size}" if size else ""
    return (
        f"a {meta['experiment']} checkpoint (model_size={meta['model_size']}, "
        f"modalities {'+'.join(meta['modalities'])}, {meta['version']})"
    )


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    target: str,
    checkpoint: Mapping[str, Any],
    hint: Callable[[Mapping[str, Any]], str] | None = None,
) -> None:
    """A CheckpointError summarising, by module, the keys of `state` that are missing, unexpected or
    mis-shaped against `expected`; the message says what the checkpoint is and, through `hint`
    (given its metadata), which flags would load it."""
    problems: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for key in sorted(set(expected) - set(state)):
        problems[_module(key)]["missing"].append(key)
    for key in sorted(set(state) - set(expected)):
        problems[_module(key)]["unexpected"].append(key)
    for key in sorted(set(state) & set(expected)):
        if tuple(state[key].shape) != tuple(expected[key].shape):
            problems[_module(key)]["mis-shaped"].append(
                f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
            )
    if not problems:
        return
    lines = [f"checkpoint {path} does not match the {target} it is loaded into:"]
    for module in sorted(problems)[:MAX_GROUPS]:
        parts = [f"{len(keys)} {kind} (e.g. {keys[0]})" for kind, keys in problems[module].items()]
        lines.append(f"  {module}: " + "; ".join(parts))
    if len(problems) > MAX_GROUPS:
        lines.append(f"  ... and {len(problems) - MAX_GROUPS} more modules")
    described = describe_checkpoint(checkpoint)
    if described:
        advice = hint(checkpoint[METADATA_KEY]) if hint and METADATA_KEY in checkpoint else ""
        lines.append(f"It is {described}{': ' + advice if advice else '.'}")
    raise CheckpointError("\n".join(lines))


def _module(key: str) -> str:
    """The module group of a state-dict key: its first two dotted parts (`model.head`)."""
    return ".".join(key.split(".")[:2])


def teacher_hint(meta: Mapping[str, Any]) -> str:
    """The flags that load a checkpoint with `meta` as a teacher."""
    return f"set --exp_options teacher_model_size={meta['model_size']} and a pairing whose teacher is {meta['experiment']}"


def experiment_hint(meta: Mapping[str, Any]) -> str:
    """The flags that load a checkpoint with `meta` into its own experiment."""
    return f"use {meta['experiment']}.py --exp_options model_size={meta['model_size']}"


def load_detector_weights(model: nn.Module, path: str | Path, target: str, role: str = "teacher checkpoint") -> None:
    """Read a checkpoint and load it as `load_detector_checkpoint` does, as a teacher."""
    load_detector_checkpoint(model, read_checkpoint(path, role), path, target, role, teacher_hint)


def load_detector_checkpoint(
    model: nn.Module,
    checkpoint: Mapping[str, Any],
    path: str | Path,
    target: str,
    role: str,
    hint: Callable[[Mapping[str, Any]], str],
) -> None:
    """Load a read checkpoint of any known format (`unikd.interop`) into `model` strictly; a mismatch is a
    CheckpointError that summarises it by module, says what the checkpoint is and, through `hint`,
    which flags would load it."""
    state, source = detector_state(checkpoint, model.state_dict(), config=getattr(model, "config", None))
    print(f"{role} {path}: {source}", file=sys.stderr)
    check_state_dict(state, model.state_dict(), path, target, checkpoint, hint=hint)
    model.load_state_dict(state, strict=True)


def load_camera_init(model: nn.Module, path: str | Path) -> None:
    """Initialise `model.camera`'s image backbone, neck and depth net (CAMERA_INIT_PARTS) from the camera branch
    of a unikd checkpoint: a depth pretraining run's, or any camera detector's of the same camera size.

    Every one of those keys must be in the checkpoint with the model's shape; otherwise a CheckpointError
    names the file, what it is and what differs. The rest of the model keeps its initialisation."""
    camera = getattr(model, "camera", None)
    if camera is None:
        raise ValueError(f"camera_init {path}: the model has no camera branch to initialise")
    checkpoint = read_checkpoint(path, "camera_init")
    prefix = "model.camera."
    state = {
        key[len(prefix):]: value
        for key, value in (checkpoint.get("state_dict") or {}).items()
        if key.startswith(prefix) and key[len(prefix):].startswith(CAMERA_INIT_PARTS)
    }
    expected = {key: value for key, value in camera.state_dict().items() if key.startswith(CAMERA_INIT_PARTS)}
    missing = sorted(set(expected) - set(state))
    shaped = [key for key in sorted(set(expected) & set(state)) if state[key].shape != expected[key].shape]
    if missing or shaped:
        details = [f"{len(missing)} of {len(expected)} keys missing (e.g. {prefix}{missing[0]})"] if missing else []
        details += [
            f"{len(shaped)} mis-shaped (e.g. {prefix}{shaped[0]}: checkpoint {tuple(state[shaped[0]].shape)} vs "
            f"model {tuple(expected[shaped[0]].shape)})"
        ] if shaped else []
        described = describe_checkpoint(checkpoint) or "a checkpoint without unikd metadata"
        raise CheckpointError(
            f"camera_init {path} ({described}) does not fit this camera branch: " + "; ".join(details)
        )
    camera.load_state_dict(state, strict=False)
