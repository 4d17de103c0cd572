"""Data-loading workers that survive a job-wide stop signal but never outlive their loader.

A cluster stops a job by sending SIGTERM (and often first SIGUSR1) to every process of it. The
training process then finishes its batch and saves (`unikd.exps.interrupt`); a worker that died of
the signal first would fail that batch (the loader reports a killed worker). But the loader itself
also stops its workers with SIGTERM: when it shuts down, and at interpreter exit, where Python's
multiprocessing terminates its daemonic children and then joins them without a timeout. A worker
that ignored every SIGTERM made the job hang for ever after any failure.

So a worker tells the two senders apart, as torch's own worker handler does: it blocks SIGTERM
and a thread takes each one with `sigwaitinfo`, which gives the sender's PID. SIGTERM from the
process that owns the loader ends the worker at once; from anyone else it is ignored. SIGUSR1, which
the loader never sends, is ignored. A worker still exits by itself within seconds when its loader
process dies (torch's watchdog). Threads of the worker that exist before `worker_init_fn` runs
keep torch's handler (exit on the parent's SIGTERM, die of anyone else's): the failure is loud, not
a hang.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable


def stop_signal_shield() -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` for a loader created in this process (module docstring)."""
    return functools.partial(shield_worker, loader_pid=os.getpid())


def shield_worker(worker_id: int, loader_pid: int) -> None:
    """In a worker: ignore SIGUSR1 and every SIGTERM but `loader_pid`'s, which ends the worker."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the waiter thread inherits the mask
    threading.Thread(target=_exit_on_loader_sigterm, args=(loader_pid,), name="sigterm-waiter", daemon=True).start()


def _exit_on_loader_sigterm(loader_pid: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == loader_pid:
            os._exit(0)  # as torch's handler does for its parent's SIGTERM: a requested, quiet end
