"""What a run needs to be the same run on 1 process or N (DDP): ranks, one writer, one order.

Lightning starts the processes (its own launcher for ``--devices N`` on one machine;
``torchrun`` and SLURM's ``srun`` are detected), but our code runs in every one of them
before the Trainer exists: the run folder, ``config.yaml`` and ``splits.csv`` are decided
there. This module keeps those decisions identical on every rank and the writes on
global rank 0 only, and gives every rank its share of one seeded sample order so that N
processes with batch B see exactly the batches one process with batch N*B would see.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torch.utils.data import DistributedSampler

from cxr_viewer.core.errors import TrainingConfigError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

# Set by the launching process so the processes Lightning starts later write to its folder.
RUN_NAME_ENV = "CXR_TRAIN_RUN_NAME"
# Rank variables of Lightning's launcher (LOCAL_RANK, NODE_RANK), torchrun (RANK) and srun (SLURM_PROCID).
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def _env_int(name: str) -> int:
    try:
        return int(os.environ.get(name, "") or 0)
    except ValueError:
        return 0


def is_global_zero_env() -> bool:
    """Whether this process is global rank 0, as its launcher announced it in the environment.

    Usable before the Trainer exists (and after): a process no launcher started is rank 0.
    Every rank variable that is set must be 0, which also holds for node 0's first
    process when several launchers are stacked (torchrun under srun).
    """
    return all(_env_int(k) == 0 for k in _RANK_VARS)


def default_run_name(task: str) -> str:
    """``<task>-<timestamp>`` on rank 0, inherited by the processes it starts.

    Processes started by another launcher (torchrun, srun) cannot know rank 0's clock:
    they need ``--name``.
    """
    if not is_global_zero_env():
        name = os.environ.get(RUN_NAME_ENV)
        if not name:
            raise TrainingConfigError(
                "A multi-process run needs --name so that every process writes to the same run folder "
                "(e.g. --name nih-$SLURM_JOB_ID)."
            )
        return name
    name = f"{task}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    os.environ[RUN_NAME_ENV] = name
    return name


def check_sync_batchnorm(enabled: bool, accelerator: str) -> None:
    """torch's SyncBatchNorm runs on GPUs only: refuse it on CPU with a message, not a trace."""
    if not enabled:
        return
    import torch

    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        raise TrainingConfigError(
            "--sync-batchnorm needs GPUs (torch's SyncBatchNorm does not run on CPU). On CPU, drop it: "
            "each process then normalises with its own batch, or choose a backbone without BatchNorm."
        )


class SeededOrderSampler(DistributedSampler):
    """One seeded permutation per epoch, shared out over however many processes run.

    The order depends on ``(seed, epoch)`` only. Process ``r`` of ``W`` takes positions
    ``r, r+W, r+2W, ...``, so with batch ``B`` per process the ``W*B`` samples of step
    ``k`` are positions ``[k*W*B, (k+1)*W*B)`` of the permutation: the batch one process
    with batch ``W*B`` draws at step ``k``. The world size is read when the sampler is
    iterated (the process group does not exist yet when the loader is built), and
    Lightning keeps a ``DistributedSampler`` instead of replacing it with its own.
    """

    def __init__(self, dataset: "Dataset[Any]", seed: int) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=int(seed), drop_last=False)

    def _follow_world(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        world, rank = dist.get_world_size(), dist.get_rank()
        if (world, rank) != (self.num_replicas, self.rank):
            self.num_replicas, self.rank = world, rank
            self.num_samples = math.ceil(len(self.dataset) / world)  # type: ignore[arg-type]
            self.total_size = self.num_samples * world

    def __iter__(self) -> Iterator[int]:
        self._follow_world()
        return super().__iter__()

    def __len__(self) -> int:
        self._follow_world()
        return super().__len__()


def unique_by_index(index: "torch.Tensor", *tensors: "torch.Tensor") -> tuple["torch.Tensor", ...]:
    """Rows of ``tensors`` once per dataset index, in index order.

    Gathered validation outputs repeat a few samples: the distributed sampler pads every
    rank to the same count with the first indices again. Scores over the whole split
    (AUROC) must count each image once, as one process does.
    """
    import numpy as np
    import torch

    _, first = np.unique(index.detach().cpu().numpy(), return_index=True)
    keep = torch.as_tensor(first, device=index.device)
    return tuple(t[keep] for t in tensors)
