"""Measured speed: prefill tokens/s at given context lengths, decode tokens/s at given batch
sizes, and peak memory; each a median of repeats after warm-up, on random token ids (speed does
not depend on which tokens they are)."""
from __future__ import annotations

import resource
import statistics
import time

import torch

from harness.models.kv_cache import cache_argument, output_cache


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, repeats: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ids(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vocab = int(model.config.vocab_size)
    return torch.randint(0, vocab, (batch, length), generator=generator).to(model.device)


@torch.no_grad()
def prefill_tokens_per_s(model, context_len: int, repeats: int = 3, warmup: int = 1) -> float:
    """One sequence of ``context_len`` tokens through the model (no cache kept)."""
    ids = _ids(model, 1, context_len)
    seconds = _median_seconds(lambda: model(input_ids=ids, use_cache=False), repeats, warmup, ids.device)
    return context_len / seconds


@torch.no_grad()
def decode_tokens_per_s(model, batch_size: int, context_len: int, new_tokens: int, repeats: int = 3,
                        warmup: int = 1) -> float:
    """Greedy decode steps on the KV cache of a ``context_len`` prompt (the prefill is not timed)."""
    ids = _ids(model, batch_size, context_len)
    cache_arg = cache_argument(model)

    def steps_after_prefill():
        out = model(input_ids=ids, use_cache=True)
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
        _sync(ids.device)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, use_cache=True, **{cache_arg: cache})
            cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
        _sync(ids.device)
        return time.perf_counter() - start

    for _ in range(warmup):
        steps_after_prefill()
    seconds = statistics.median(steps_after_prefill() for _ in range(max(1, repeats)))
    return batch_size * new_tokens / seconds


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """Peak memory since ``reset_peak``: the GPU's allocated peak, or on CPU the process's peak
    resident set (which never goes down, so on CPU it bounds every model measured so far)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
