"""Distributed set-up for fine-tuning under torchrun: join the process group, rank and world
size, a barrier. A plain run stays single-process and every call here is a no-op."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs (one per
    process, LOCAL_RANK), gloo on CPU. A plain run stays single-process. True when distributed."""
    import os
    from datetime import timedelta

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # rank 0 may spend a long time on the label-free sets while the others wait at a barrier
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=12))
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return True


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    import torch.distributed as dist

    if dist_info()[1] > 1:
        dist.barrier()
