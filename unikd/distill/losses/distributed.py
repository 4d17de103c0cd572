"""Cross-process helpers for losses; each is a no-op when torch.distributed is not initialised."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def average_across_processes(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (all_reduce); the tensor itself without torch.distributed."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def gather_across_processes(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every process's rows [N_p, ...] (N_p may differ) in rank order.

    Returns (gathered, offset): this process's own rows sit at gathered[offset : offset + N] and
    keep their autograd graph; the rows of other processes carry no gradient.
    """
    if not is_distributed():
        return rows, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows.detach()
    chunks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded)
    parts = [chunk[:size] for chunk, size in zip(chunks, sizes, strict=True)]
    parts[rank] = rows
    return torch.cat(parts), sum(sizes[:rank])
