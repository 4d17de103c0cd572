"""DDP: model-side random draws differ between processes and repeat across runs (the data do not depend on
the process); records are gathered to rank 0 only; the buffer broadcast is skipped only with SyncBatchNorm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.strategies import DDPStrategy

from unikd.exps.distributed import RankSeeding, ddp_strategy, rank_seed
from unikd.exps.tasks import gathered_records

DRAWS_EXP = Path(__file__).resolve().parent / "fixtures/draws_exp.py"
COMMON = ["--no_progress_bar", "-b", "1", "--max_epochs", "1", "--limit_train_batches", "2", "--limit_val_batches", "0",
          "--exp_options", "model_size=small", "num_workers=0", "num_sweeps=1"]


def test_rank_seeding_differs_per_rank_and_epoch_and_repeats() -> None:
    def draws(rank: int, epoch: int) -> torch.Tensor:
        RankSeeding(seed=5).on_train_epoch_start(SimpleNamespace(global_rank=rank, current_epoch=epoch), None)
        return torch.rand(4)

    assert torch.equal(draws(1, 0), draws(1, 0))
    assert not torch.equal(draws(0, 0), draws(1, 0))
    assert not torch.equal(draws(1, 0), draws(1, 1))
    assert rank_seed(5, 1, 0) != rank_seed(6, 1, 0) and 0 <= rank_seed(5, 1, 0) < 2**32


def test_buffer_broadcast_is_skipped_only_with_sync_batchnorm() -> None:
    assert ddp_strategy(1, sync_batchnorm=False) == "auto"
    plain = ddp_strategy(8, sync_batchnorm=False)
    assert isinstance(plain, DDPStrategy) and plain._ddp_kwargs == {}  # BatchNorm statistics: rank 0's
    synced = ddp_strategy(8, sync_batchnorm=True)
    assert synced._ddp_kwargs in ({"forward_sync_buffers": False}, {"broadcast_buffers": False})


def _gather_worker(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist

    def refuse(*args, **kwargs):
        raise AssertionError("all_gather_object copies every record to every rank")

    dist.all_gather_object = refuse
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        records = [{"token": f"r{rank}-{i}"} for i in range(rank + 1)]  # rank 0: one record, rank 1: two
        results.put((rank, gathered_records(records)))
    finally:
        dist.destroy_process_group()


def test_records_are_gathered_to_rank_zero_only(tmp_path: Path) -> None:
    context = torch.multiprocessing.get_context("fork")
    results = context.Queue()
    torch.multiprocessing.start_processes(
        _gather_worker, args=(str(tmp_path / "init"), results), nprocs=2, start_method="fork"
    )
    outcome = dict(results.get(timeout=60) for _ in range(2))
    assert outcome[0] == [{"token": "r0-0"}, {"token": "r1-0"}, {"token": "r1-1"}]
    assert outcome[1] is None


def train_two_processes(synthetic_root: Path, output_root: Path) -> dict[int, list[dict]]:
    command = [sys.executable, str(DRAWS_EXP), "--data_root", str(synthetic_root), "--output_root", str(output_root),
               "--devices", "2", "--run_name", "draws", *COMMON]
    output_root.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("UNIKD_RUN_DIR", "NODE_RANK", "LOCAL_RANK", "RANK")}
    result = subprocess.run(command, cwd=output_root, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = output_root / "DrawsExp" / "draws"
    return {rank: json.loads((run / f"draws_rank{rank}.json").read_text()) for rank in range(2)}


@pytest.mark.slow
def test_two_processes_draw_differently_and_repeat_across_runs(synthetic_root: Path, tmp_path: Path) -> None:
    first = train_two_processes(synthetic_root, tmp_path / "first")
    second = train_two_processes(synthetic_root, tmp_path / "second")
    assert first == second  # samples and draws repeat run to run
    for step in range(2):
        assert first[0][step]["draw"] != first[1][step]["draw"]  # each process draws its own numbers
    samples = [s for rank in range(2) for step in first[rank] for s in step["samples"]]
    assert len(set(samples)) == 4  # the two processes share out distinct samples
