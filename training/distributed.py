"""Process-group set-up for `torchrun` (one process per GPU, or several on CPU with gloo).

Without torchrun's environment (WORLD_SIZE unset) everything runs in one process and the
helpers below reduce to no-ops, so the trainers have a single code path.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass
class Context:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self):
        return self.rank == 0


def setup():
    """Join the process group torchrun describes (nccl on GPUs, gloo on CPU) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        # Processes sharing a machine share its cores; oversubscribed threads crawl.
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, local_rank, world_size, device)


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model, context):
    """`model` in DistributedDataParallel when several processes train, else as it is."""
    if context.world_size == 1:
        return model
    device_ids = [context.local_rank] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def mean_over_ranks(totals, counts, context):
    """Per-key mean over all ranks of values summed locally in `totals` over `counts` items."""
    keys = sorted(totals)
    sums = torch.tensor([totals[k] for k in keys] + [counts], dtype=torch.float64, device=context.device)
    if context.world_size > 1:
        dist.all_reduce(sums)
    return {k: (sums[i] / sums[-1]).item() for i, k in enumerate(keys)}
