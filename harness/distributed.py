"""torchrun support: which rank this is, which items it owns, and gathering results on rank 0.

Under ``torchrun --nproc_per_node N`` (one node or several) every rank loads the model on its own
device, scores an interleaved share of the length-sorted items, and rank 0 gathers the records and
writes the same files a single process would. Without torchrun nothing here does anything.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group torchrun describes (nccl on GPUs, gloo on CPU); no-op otherwise."""
    if launched_world_size() <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)


def launched_world_size() -> int:
    """Processes torchrun started (whether or not a process group was joined)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device_for_rank() -> str | None:
    """The device this rank's model goes on (None: leave it to the model config)."""
    if launched_world_size() > 1 and torch.cuda.is_available():
        return f"cuda:{local_rank()}"
    return None


def my_share(lengths: list[int]) -> set[int]:
    """This rank's items: every world_size-th item in length order, so each rank gets long and
    short items alike."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return set(order[rank() :: world_size()])


def gather_records(records: dict[int, dict]) -> dict[int, dict]:
    """Every rank's records, merged (on every rank)."""
    if not is_distributed():
        return records
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, records)
    merged: dict[int, dict] = {}
    for part in parts:
        merged.update(part)
    return merged


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def infer_sharded(inferencer, model, items: list, final, partial, run_id: str, finish, desc: str = ""):
    """Run ``inferencer`` on this rank's share of ``items`` (resumable per rank), gather every
    rank's records and return ``finish(store)`` (only rank 0's store writes the predictions file).
    The rank partial files go only after the whole file is written, so a death in between loses
    nothing."""
    from harness.io import PredictionStore

    finished = PredictionStore(final, None, run_id)
    if len(finished.done) == len(items):
        whole = PredictionStore(final if is_main() else None, None, run_id)
        whole.done = finished.done
        return finish(whole)
    rank_partial = None
    if partial is not None:
        rank_partial = partial.with_name(partial.name.replace(".partial", f".rank{rank()}of{world_size()}.partial"))
    mine = PredictionStore(None, rank_partial, run_id)
    inferencer.infer(model, items, mine, desc=f"{desc}[{rank()}]", select=my_share)
    whole = PredictionStore(final if is_main() else None, None, run_id)
    whole.done = gather_records(mine.done)
    result = finish(whole)
    barrier()  # rank 0 has written the predictions file
    if rank_partial is not None:
        rank_partial.unlink(missing_ok=True)
    return result
