"""Running experiment-file commands as subprocesses: one per device slot at a time, in dependency
order, each logging to its own file, with one progress bar over the runs' epochs."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from unikd.exps.run_dir import RUN_DIR_ENV

LOG_TAIL_LINES = 40


@dataclass
class Run:
    """One command of a study. `run_dir` is the experiment's run folder (its epoch checkpoints count
    the progress of a training run); `epochs` is 0 for an evaluation; `needs` names runs to finish first."""

    name: str
    command: list[str]
    log: Path
    run_dir: Path
    epochs: int = 0
    needs: tuple[str, ...] = ()
    seconds: float | None = None  # wall time, once done

    def progress(self) -> int:
        """Epochs done (an evaluation counts as one step, when done)."""
        if self.seconds is not None:
            return max(self.epochs, 1)
        return min(len(list((self.run_dir / "checkpoints").glob("epoch=*.ckpt"))), self.epochs)


@dataclass
class Slot:
    """Where a run goes: extra environment variables and command-line arguments."""

    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


class RunFailed(RuntimeError):
    """A run exited with an error; the message names it, its log and the log's tail."""


def device_slots(jobs: int | None, max_parallel: int) -> list[Slot]:
    """One slot per visible GPU (`CUDA_VISIBLE_DEVICES`, `--gpus 1`), else `jobs` CPU slots (default:
    the cores, at most `max_parallel`) sharing the cores through `OMP_NUM_THREADS`."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        count = min(jobs or gpus, gpus)
        return [Slot({"CUDA_VISIBLE_DEVICES": str(i)}, ["--gpus", "1"]) for i in range(count)]
    cores = os.cpu_count() or 1
    count = jobs or max(1, min(cores, max_parallel))
    threads = max(1, cores // count)
    return [Slot({"OMP_NUM_THREADS": str(threads)}) for _ in range(count)]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_all(runs: list[Run], slots: list[Slot], desc: str = "runs", poll_seconds: float = 1.0,
            on_done: Callable[[Run], None] | None = None) -> None:
    """Run every run, each when its `needs` are done and a slot is free, calling `on_done` with each run
    that succeeds. The first failure stops the others and raises RunFailed; each run's wall time is set
    in `seconds`."""
    names = {run.name for run in runs}
    unknown = {need for run in runs for need in run.needs} - names
    if unknown:
        raise ValueError(f"runs need unknown runs: {sorted(unknown)}")
    pending, done = list(runs), set()
    running: dict[str, tuple[Run, subprocess.Popen, Slot, float]] = {}
    free = list(slots)
    base_env = {key: value for key, value in os.environ.items() if key != RUN_DIR_ENV}
    bar = tqdm(total=sum(max(run.epochs, 1) for run in runs), desc=desc, unit="epoch")
    try:
        while pending or running:
            for name, (run, process, slot, start) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                if code != 0:
                    raise RunFailed(f"run {name} failed (exit status {code}); log {run.log}:\n{log_tail(run.log)}")
                run.seconds = time.perf_counter() - start
                done.add(name)
                free.append(slot)
                if on_done is not None:
                    on_done(run)
            for run in [run for run in pending if set(run.needs) <= done][: len(free)]:
                slot = free.pop(0)
                run.log.parent.mkdir(parents=True, exist_ok=True)
                with open(run.log, "w") as log:
                    process = subprocess.Popen(
                        run.command + slot.args, stdout=log, stderr=subprocess.STDOUT, env=base_env | slot.env
                    )
                running[run.name] = (run, process, slot, time.perf_counter())
                pending.remove(run)
            if pending and not running:
                raise ValueError(f"runs wait on each other: {[run.name for run in pending]}")
            postfix = ", ".join(running) or "-"
            if postfix != bar.postfix:
                bar.set_postfix_str(postfix, refresh=False)
            bar.update(sum(run.progress() for run in runs) - bar.n)
            if running:
                time.sleep(poll_seconds)
    finally:
        for _, process, _, _ in running.values():
            process.terminate()
            process.wait()
        bar.close()
