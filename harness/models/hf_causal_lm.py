"""A Hugging Face causal LM as a backend of the model API (``harness/models/api.py``).

- ``score``: log-likelihood of token positions of several sequences that share a prefix. The
  shared prefix (an item's context, common to all its labels) runs through the model once, packed
  with the label suffixes and with other items into rows of a token budget per batch
  (``packed_scoring``, ``max_batch_tokens``; see ``packed_scoring.py``), or, where packing cannot
  be expressed (a short sliding window, ``packed_scoring=False``), first alone and then with the
  suffixes on its KV cache. Continuation-only log-likelihood and whole-sequence average
  perplexity are both sums over a chosen range of these positions.
- ``score_rolling``: the same scoring over the rolling windows of a long text.
- ``generate``: left-truncated generation with stop strings; greedy requests go through
  ``refill.RefillDecoder`` (a finished row is refilled with the next prompt at once), others
  through batched, left-padded HF ``generate``.
- ``encode``: the tokenisation all of them use (special tokens added, as the model expects).

Batching is the ``Collator``'s: longest first, halved on out-of-memory, the size that fits kept
(for packed scoring the token budget is what is halved).
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from harness.errors import HarnessError, one_line
from harness.models.kv_cache import cache_argument, output_cache
from harness.models.api import GenerationRequest, OnBatch, RollingRequest, Score, ScoreRequest, rolling_windows
from harness.models.collator import Collator, check_token_budget
from harness.models.refill import NotRefillable, RefillDecoder, greedy_compatible
from harness.models.packed_scoring import MASK_LIMIT, Unit, pack, packing_mode, unit_length
from harness.registry import MODELS

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


# device_map values that spread a model over devices (others name one device, e.g. "cuda:0")
SPREADING_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def resolve_dtype(dtype: str | torch.dtype | None):
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise HarnessError(f"model dtype {dtype!r} is not one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.sep in path and path.count("/") != 1


def folder_stamp(path: str) -> str | None:
    """A digest of a local model folder's config and weight files (names, sizes, modification times), so
    that predictions and calibration statistics cached for a folder are not reused after its weights
    are rebuilt in place (same path, new model). None for a hub id (its path names a fixed revision)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin")):
            stat = f.stat()
            digest.update(f"{f.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@MODELS.register_module(name="HFCausalLM")
class HFCausalLM:
    """A transformers ``AutoModelForCausalLM`` plus tokenizer, loaded once."""

    def __init__(
        self,
        path: str,
        tokenizer_path: str | None = None,
        abbr: str | None = None,
        dtype: str | None = "float32",
        device_map: str | dict | None = None,
        device: str | None = None,
        batch_size: int = 8,
        max_seq_len: int = 2048,
        max_out_len: int = 100,
        meta_template: dict | None = None,
        stop_strings: Sequence[str] = (),
        generation_kwargs: dict | None = None,
        tokenizer_kwargs: dict | None = None,
        model_kwargs: dict | None = None,
        pad_token_id: int | None = None,
        add_special_tokens: bool = True,
        packed_scoring: bool = True,
        max_batch_tokens: int | None = None,
        refill_rows: bool = True,
        model=None,
        tokenizer=None,
    ):
        self.path = str(path)
        self.abbr = abbr or Path(self.path.rstrip("/")).name
        self.collator = Collator(batch_size)  # shared by scoring and generation: one size that fits
        self.max_seq_len = int(max_seq_len)
        self.max_out_len = int(max_out_len)
        self.meta_template = meta_template
        self.stop_strings = list(stop_strings or [])
        self.generation_kwargs = dict(generation_kwargs or {})
        # False reproduces lm-evaluation-harness, which encodes without BOS for most models
        self.add_special_tokens = bool(add_special_tokens)
        # False: always score on the KV cache (the path for attention without custom 4D masks)
        self.packed_scoring = bool(packed_scoring)
        # tokens per packed scoring batch; None: batch_size times the longest item of the call
        self.max_batch_tokens = check_token_budget(max_batch_tokens)
        # greedy generation refills finished rows with the next prompt (refill.py); False: HF generate
        self.refill_rows = bool(refill_rows)
        self._cache_refillable: bool | None = None  # False once the model's cache proved not refillable
        self._decoder: RefillDecoder | None = None
        if model is None:  # named before the tokenizer, which defaults to the same folder
            self._check_path(self.path, "--model_path (the model config's path)")
        self.tokenizer = tokenizer if tokenizer is not None else self._load_tokenizer(
            tokenizer_path or self.path, tokenizer_kwargs or {}
        )
        # ``device`` (one device, e.g. a torchrun rank's GPU) loads the weights straight there, so
        # ranks do not each hold a CPU copy first; ``device_map`` takes precedence when both are set
        self.model = model if model is not None else self._load_model(
            resolve_dtype(dtype), device_map if device_map is not None else device, model_kwargs or {}
        )
        self.model.eval()
        warning = slow_experts_warning(self.model.config, self.device.type)
        if warning:
            log.warning(warning)
        self.pad_token_id = self._pad_token_id(pad_token_id)
        self._base_identity = {"path": self.path, "files": folder_stamp(self.path), "dtype": str(dtype),
                               "max_seq_len": self.max_seq_len, "add_special_tokens": self.add_special_tokens}

    @property
    def identity(self) -> dict:
        """What a cached prediction depends on: the weights and tokenisation, and the content of
        the compression plan installed on the model right now (none after ``reset_plan``)."""
        plan = getattr(self.model, "compression_plan", None)
        return {**self._base_identity, "plan": None if plan is None else plan.fingerprint()}

    @property
    def batch_size(self) -> int:
        """The batch size in use: the configured one, or the smaller one that fit in memory."""
        return self.collator.current()

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.collator = Collator(value)

    @property
    def prefix_token_id(self) -> int:
        """What a context-free continuation is conditioned on: end-of-text (lm-eval's rule)."""
        eos = self.tokenizer.eos_token_id
        return int(eos) if eos is not None else self.pad_token_id

    # ------------------------------------------------------------------ loading
    def _load_tokenizer(self, path: str, kwargs: dict):
        from transformers import AutoTokenizer

        self._check_path(path, "tokenizer_path")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as exc:
            raise HarnessError(f"cannot load a tokenizer from {path}: {one_line(exc)}") from None
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"
        return tokenizer

    def _load_model(self, dtype, device_map, kwargs: dict):
        from transformers import AutoModelForCausalLM

        from harness.compress.materialize import is_compressed_checkpoint, load_compressed
        from harness.models.quantized import is_per_expert_quantised, load_per_expert_quantised

        if is_compressed_checkpoint(self.path):  # written by tools/materialize.py with its plan
            dtype = dtype if dtype != "auto" else None
            if device_map is None or isinstance(device_map, str) and device_map not in SPREADING_DEVICE_MAPS:
                return load_compressed(self.path, dtype=dtype, device=device_map or "cpu")
            return load_compressed(self.path, dtype=dtype, device_map=device_map)
        if is_per_expert_quantised(self.path):  # tools/quantize.py's (llmcompressor's) MoE layout
            return load_per_expert_quantised(self.path, dtype=dtype, device_map=device_map, **kwargs)
        try:
            model, info = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype, device_map=device_map,
                                                               output_loading_info=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise HarnessError(f"cannot load a model from {self.path}: {one_line(exc)}") from None
        check_all_weights_loaded(self.path, info)
        return model

    @staticmethod
    def _check_path(path: str, argument: str) -> None:
        if _looks_local(path) and not Path(path).expanduser().exists():
            raise HarnessError(f"{argument} {path} does not exist; pass a model folder or a hub id")

    def _pad_token_id(self, explicit: int | None) -> int:
        if explicit is not None:
            return int(explicit)
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ------------------------------------------------------------------ tokenisation
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, groups: list[list[ScoreRequest]], on_batch: OnBatch | None = None,
              batch_size: int | None = None) -> list[list[Score]]:
        """Score every request; the requests of one group share their longest common prefix."""
        return self._score_groups([self._truncate_group(group) for group in groups], on_batch, batch_size)

    @torch.no_grad()
    def score_rolling(self, requests: list[RollingRequest], stride: int | None = None,
                      on_batch: OnBatch | None = None, batch_size: int | None = None) -> list[Score]:
        """Log-likelihood of every token of each text, over windows of ``max_seq_len`` tokens
        (``api.rolling_windows``); ``on_batch`` hears of a text once all its windows are scored."""
        windows, owner = [], []
        for i, request in enumerate(requests):
            for window in rolling_windows(request.tokens, self.max_seq_len, self.prefix_token_id, stride):
                windows.append([window])
                owner.append(i)
        remaining = [0] * len(requests)
        for i in owner:
            remaining[i] += 1
        totals = [[0.0, 0, True] for _ in requests]

        def window_done(positions: list[int], scores: list) -> None:
            finished = []
            for k, [score] in zip(positions, scores):
                i = owner[k]
                totals[i][0] += score.logprob
                totals[i][1] += score.num_tokens
                totals[i][2] = totals[i][2] and score.is_greedy
                remaining[i] -= 1
                if remaining[i] == 0:
                    finished.append(i)
            if on_batch is not None and finished:
                on_batch(finished, [Score(*totals[i]) for i in finished])

        if windows:
            self._score_groups(windows, window_done, batch_size)
        return [Score(*t) for t in totals]

    def _truncate_group(self, group: list[ScoreRequest]) -> list[ScoreRequest]:
        """Cut the same number of leading tokens from every request so the longest fits."""
        cut = max(len(r.tokens) for r in group) - self.max_seq_len
        if cut <= 0:
            return group
        return [ScoreRequest(r.tokens[cut:], max(1, r.score_from - cut)) for r in group]

    def _score_groups(self, groups: list[list[ScoreRequest]], on_batch: OnBatch | None,
                      batch_size: int | None) -> list[list[Score]]:
        """Packed rows up to a token budget where the attention allows, else the KV-cache path."""
        if not groups:
            return []
        units = [_group_units(group) for group in groups]
        longest = max(len(r.tokens) for group in groups for r in group)
        mode = packing_mode(self.model.config, longest) if self.packed_scoring else None
        if mode is None:
            lengths = [max(len(r.tokens) for r in group) for group in groups]
            run = lambda batch: [row[0] for row in self._score_batch(ScoreBatch([[g] for g in batch], None))]  # noqa: E731
            return self.collator.run(units, lengths, run, on_batch, batch_size)
        layout = "varlen" if mode == "varlen" else "mask"
        lengths = [sum(unit_length(u, layout) for u in group_units) for group_units in units]
        budget = self.max_batch_tokens or self.collator.current(batch_size) * max(lengths)
        # a dense mask makes attention cost grow with the row width; flex and varlen skip the rest
        hidden = getattr(self.model.config, "hidden_size", None) or 4096
        attention_cost = 1.0 / (6 * hidden) if mode == "mask" else 0.0
        return self.collator.run_packed(units, lengths, lambda rows: self._score_batch(ScoreBatch(rows, mode)),
                                        budget, on_batch, attention_cost)

    def _score_batch(self, batch: "ScoreBatch") -> list[list[list[Score]]]:
        """Scores of a batch's rows (row -> group -> units), as row -> group -> request scores.

        Dense masks stay below ``MASK_LIMIT`` entries: a batch is split into forwards of fewer rows,
        and a row too wide even alone goes through the KV-cache path (as does ``mode=None``)."""
        rows, mode = batch.rows, batch.mode
        unit_rows = [[unit for group in row for unit in group] for row in rows]
        width = max(sum(unit_length(u, "varlen" if mode == "varlen" else "mask") for u in row) for row in unit_rows)
        per_forward = len(unit_rows) if mode in ("flex", "varlen") else MASK_LIMIT // (width * width)
        logprobs, greedy = [], []
        if mode is None or per_forward < 1:
            logprobs, greedy = self._score_on_cache([u for row in unit_rows for u in row])
        else:
            for k in range(0, len(unit_rows), per_forward):
                lp, gr = self._score_packed(unit_rows[k : k + per_forward], mode)
                logprobs += lp
                greedy += gr
        flat = iter(zip(logprobs, greedy))
        return [[_scores_of([u for u in group], flat) for group in row] for row in rows]

    def _score_packed(self, rows: list[list[Unit]], mode: str) -> tuple[list[list[float]], list[list[bool]]]:
        """One forward of packed rows; per request (row-major) the log-probability and greedy flag
        of every target t = 1 .. len(tokens) - 1 (placeholders where never read)."""
        batch = pack(rows, self.pad_token_id, self.device, layout="varlen" if mode == "varlen" else "mask")
        mask = batch.attention_mask(self.model.config._attn_implementation, self.model.dtype)
        out = self.model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                         use_cache=False, logits_to_keep=batch.keep)
        logits = out.logits.reshape(-1, out.logits.shape[-1]).float()  # (kept positions, vocab)
        requests = [request for row in rows for unit in row for request in unit.requests]
        # (kept row, target) of every score that is read; -1 rows are never read and stay placeholders
        pairs = [(row, target) for reads, request in zip(batch.reads, requests)
                 for row, target in zip(reads, request.tokens[1:]) if row >= 0]
        rows_t = torch.tensor([row for row, _ in pairs], dtype=torch.long, device=logits.device)
        targets = torch.tensor([target for _, target in pairs], dtype=torch.long, device=logits.device)
        chosen = logits[rows_t, targets]
        log_norm, best = _log_norm_and_argmax(logits)
        lp = (chosen - log_norm[rows_t]).tolist()
        gr = (best[rows_t] == targets).tolist()
        logprobs, greedy, k = [], [], 0
        for reads in batch.reads:
            read = sum(1 for row in reads if row >= 0)
            # the reads of one request are contiguous at its end (every target from the first read on)
            logprobs.append([0.0] * (len(reads) - read) + lp[k : k + read])
            greedy.append([True] * (len(reads) - read) + gr[k : k + read])
            k += read
        return logprobs, greedy

    def _score_on_cache(self, units: list[Unit]) -> tuple[list[list[float]], list[list[bool]]]:
        """Prefixes in one forward, then the suffixes on their KV cache (any attention implementation)."""
        need_prefix_scores = any(r.score_from < len(u.prefix) for u in units for r in u.requests)
        prefix_logprobs, prefix_greedy, last_logits, cache, prefix_mask = self._run_prefixes(
            [u.prefix for u in units], need_prefix_scores
        )
        suffix_logprobs, suffix_greedy = self._run_suffixes(units, last_logits, cache, prefix_mask)
        logprobs, greedy, k = [], [], 0
        for u, unit in enumerate(units):
            p = len(unit.prefix)
            for _ in unit.requests:
                # token t >= 1: prefix part for t < p, suffix part for t >= p
                logprobs.append(prefix_logprobs[u][: p - 1] + suffix_logprobs[k])
                greedy.append(prefix_greedy[u][: p - 1] + suffix_greedy[k])
                k += 1
        return logprobs, greedy

    def _run_prefixes(self, prefixes: list[list[int]], need_prefix_scores: bool):
        """Left-padded forward of the prefixes: per-token logprobs (only when some request scores
        tokens inside its prefix), the last position's logits and the KV cache."""
        ids, mask = _left_pad(prefixes, self.pad_token_id, self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = {} if need_prefix_scores else {"logits_to_keep": 1}  # skip the LM head over the prefix
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep)
        width = ids.shape[1]
        if need_prefix_scores and width > 1:
            lp, gr = _token_logprobs(out.logits[:, :-1], ids[:, 1:])
            lp, gr = lp.tolist(), gr.tolist()
            logprobs = [lp[i][width - len(p) :] if len(p) > 1 else [] for i, p in enumerate(prefixes)]
            greedy = [gr[i][width - len(p) :] if len(p) > 1 else [] for i, p in enumerate(prefixes)]
        else:  # never read: every scored position lies beyond its prefix
            logprobs = [[0.0] * (len(p) - 1) for p in prefixes]
            greedy = [[True] * (len(p) - 1) for p in prefixes]
        return logprobs, greedy, out.logits[:, -1].float(), output_cache(out), mask

    def _run_suffixes(self, units, last_logits, cache, prefix_mask):
        """Run every request's suffix on its unit's cached prefix."""
        rows, suffixes, starts = [], [], []
        for u, unit in enumerate(units):
            for request in unit.requests:
                rows.append(u)
                suffixes.append(request.tokens[len(unit.prefix) :])
                starts.append(len(unit.prefix))
        index = torch.tensor(rows, device=self.device)
        first_tokens = torch.tensor([s[0] for s in suffixes], device=self.device)
        first_lp, first_greedy = _token_logprobs(last_logits[index], first_tokens)
        first_lp, first_greedy = first_lp.tolist(), first_greedy.tolist()

        longest = max(len(s) for s in suffixes)
        if longest == 1:  # every suffix is one token: the prefix pass already scored them
            return [[lp] for lp in first_lp], [[g] for g in first_greedy]

        # Suffixes run sorted by length in chunks of at most batch_size rows, so short endings are
        # not padded to the longest one of the batch; each chunk reads its rows of the prefix cache.
        order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))
        chunks = [order[i : i + max(1, self.batch_size)] for i in range(0, len(order), max(1, self.batch_size))]
        rest_lp: list = [None] * len(suffixes)
        rest_greedy: list = [None] * len(suffixes)
        for n, chunk in enumerate(chunks):
            chunk_cache = cache if n == len(chunks) - 1 else copy.deepcopy(cache)
            lp, gr = self._run_suffix_chunk([suffixes[i] for i in chunk], [starts[i] for i in chunk],
                                            index[chunk], chunk_cache, prefix_mask)
            for i, row_lp, row_gr in zip(chunk, lp, gr):
                rest_lp[i], rest_greedy[i] = row_lp, row_gr
        logprobs = [[first_lp[i]] + rest_lp[i] for i in range(len(suffixes))]
        greedy = [[first_greedy[i]] + rest_greedy[i] for i in range(len(suffixes))]
        return logprobs, greedy

    def _run_suffix_chunk(self, suffixes, starts, index, cache, prefix_mask):
        """Right-padded forward of suffixes (all but their last token) on rows ``index`` of the cache."""
        cache.reorder_cache(index)
        ids, suffix_mask = right_pad([s[:-1] for s in suffixes], self.pad_token_id, self.device)
        targets, _ = right_pad([s[1:] for s in suffixes], 0, self.device)
        mask = torch.cat([prefix_mask[index], suffix_mask], dim=1)
        positions = torch.tensor(starts, device=self.device)[:, None] + torch.arange(ids.shape[1], device=self.device)
        cache_arg = cache_argument(self.model)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_arg: cache}
        )
        lp, gr = _token_logprobs(out.logits, targets)
        lp, gr = lp.tolist(), gr.tolist()
        return [lp[i][: len(s) - 1] for i, s in enumerate(suffixes)], [gr[i][: len(s) - 1] for i, s in enumerate(suffixes)]

    # ------------------------------------------------------------------ generation
    def encode_prompt(self, text: str, max_out_len: int | None = None) -> list[int]:
        """Prompt tokens for generation, truncated from the left to leave room for the output
        (the tokenizer's own truncation, so special tokens such as BOS are kept)."""
        budget = max(1, self.max_seq_len - int(max_out_len or self.max_out_len))
        return self.tokenizer(text, truncation=True, max_length=budget,
                              add_special_tokens=self.add_special_tokens)["input_ids"]

    def generation_request(self, prompt: str | list[int], max_out_len: int | None = None,
                           stop_strings: Sequence[str] | None = None, min_out_len: int | None = None,
                           **generation_kwargs) -> GenerationRequest:
        """A request with this model's defaults for what the caller leaves out."""
        max_out_len = int(max_out_len or self.max_out_len)
        tokens = prompt if isinstance(prompt, list) else self.encode_prompt(prompt, max_out_len)
        stops = tuple(self.stop_strings if stop_strings is None else stop_strings)
        return GenerationRequest(list(tokens), max_out_len, stops, min_out_len, dict(generation_kwargs))

    @torch.no_grad()
    def generate(
        self,
        requests: Sequence[GenerationRequest] | Sequence[str] | Sequence[list[int]],
        max_out_len: int | None = None,
        stop_strings: Sequence[str] | None = None,
        min_out_len: int | None = None,
        on_batch: OnBatch | None = None,
        batch_size: int | None = None,
        **generation_kwargs,
    ) -> list[str]:
        """A continuation per request; greedy unless ``do_sample=True`` is given. Plain prompts
        (texts, or tokens from ``encode_prompt``) become requests with the other arguments."""
        requests = [r if isinstance(r, GenerationRequest) else
                    self.generation_request(r, max_out_len, stop_strings, min_out_len, **generation_kwargs)
                    for r in requests]
        lengths = [len(r.tokens) for r in requests]
        order = self.collator.order(requests, lengths, GenerationRequest.settings_key)
        self._decoder = self._refill_decoder([requests[i] for i in order if self._refillable(requests[i])],
                                             batch_size)
        try:
            return self.collator.run(requests, lengths, self._generate_batch, on_batch, batch_size,
                                     same_batch=GenerationRequest.settings_key)
        finally:
            self._decoder = None

    def _refillable(self, request: GenerationRequest) -> bool:
        """Greedy without logits processors: decoded by ``RefillDecoder`` (refilled rows)."""
        if not self.refill_rows or self._cache_refillable is False:
            return False
        return greedy_compatible(self.model.generation_config, {**self.generation_kwargs, **request.generation_kwargs})

    def _refill_decoder(self, queue: list[GenerationRequest], batch_size: int | None = None) -> RefillDecoder:
        eos = self.model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        return RefillDecoder(self.model, self.tokenizer, queue, lambda: self.collator.current(batch_size),
                             self.pad_token_id, eos, self._stop_hit, self._finish_text)

    def _stop_hit(self, tokens: list[int], stop_strings: Sequence[str]) -> bool:
        stops = [s for s in stop_strings if s]
        return bool(stops) and stop_in_tail(self.tokenizer, [tokens], stops)[0]

    def _finish_text(self, tokens: list[int], stop_strings: Sequence[str]) -> str:
        return cut_at_stop_strings(self.tokenizer.decode(tokens, skip_special_tokens=True), stop_strings)

    def _generate_batch(self, batch: list[GenerationRequest]) -> list[str]:
        """A batch of one call's requests: through the call's ``RefillDecoder`` where greedy (the
        rows it leaves in flight carry over to the next batch), else one ``generate``."""
        if self._refillable(batch[0]):
            decoder = self._decoder if self._decoder is not None and self._decoder.serves(batch) else \
                self._refill_decoder(batch)
            try:
                return decoder.run(batch)
            except NotRefillable:  # sliding-window or linear-attention caches: decided once per model
                self._cache_refillable = False
                self._decoder = None
        return self._generate_hf(batch)

    def _generate_hf(self, batch: list[GenerationRequest]) -> list[str]:
        first = batch[0]  # the collator batches only requests with the same settings
        kwargs = {"do_sample": False, **self.generation_kwargs, **first.generation_kwargs}
        if first.min_out_len:
            kwargs["min_new_tokens"] = int(first.min_out_len)
        stops = list(first.stop_strings)
        ids, mask = _left_pad([r.tokens for r in batch], self.pad_token_id, self.device)
        criteria = [StopOnStrings(self.tokenizer, stops, ids.shape[1])] if stops else []
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=first.max_out_len, pad_token_id=self.pad_token_id,
            stopping_criteria=StoppingCriteriaList(criteria), **kwargs,
        )
        texts = self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        return [cut_at_stop_strings(t, stops) for t in texts]


@dataclass
class ScoreBatch:
    """What one scoring batch runs: rows of groups (each group its units) and how rows reach the
    model (``packing_scoring.packing_mode``; None: the KV-cache path, one group per row)."""

    rows: list[list[list[Unit]]]
    mode: str | None

    def __len__(self) -> int:
        return len(self.rows)


class StopOnStrings(StoppingCriteria):
    """Stop a sequence once its generated text contains a stop string.

    transformers' own ``stop_strings`` needs to analyse the tokenizer's vocabulary, which fails for
    some tokenizers; decoding the tail of each sequence works for any tokenizer."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], prompt_length: int):
        self.tokenizer = tokenizer
        self.stop_strings = [s for s in stop_strings if s]
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = stop_in_tail(self.tokenizer, input_ids[:, self.prompt_length :], self.stop_strings)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def stop_in_tail(tokenizer, generated, stop_strings: Sequence[str]) -> list[bool]:
    """Whether each sequence's generated tokens end in text holding a stop string: the last
    ``longest stop + 8`` tokens are decoded (enough to hold any stop string)."""
    window = max(len(s) for s in stop_strings) + 8
    tails = tokenizer.batch_decode([g[-window:].tolist() if torch.is_tensor(g) else list(g[-window:])
                                    for g in generated])
    return [any(stop in tail for stop in stop_strings) for tail in tails]


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and whether the target is the argmax, for logits (..., V) and targets (...)."""
    logits = logits.float()
    chosen = logits.gather(-1, targets[..., None]).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1), logits.argmax(-1) == targets


def _log_norm_and_argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logsumexp and argmax over the last dim from one max pass, computed in place (``logits`` is
    overwritten): on CPU half the time of ``logsumexp`` plus ``argmax``, the same values."""
    top, best = logits.max(-1)
    return logits.sub_(top[:, None]).exp_().sum(-1).log_().add_(top), best


def slow_experts_warning(config, device_type: str) -> str | None:
    """Why a MoE model on a GPU would not run its experts as one grouped GEMM, or None.

    transformers 5 runs fused experts through ``config._experts_implementation`` ("grouped_mm" by
    default) but falls back to a per-expert loop ("eager") when grouped_mm cannot dispatch, and
    remote-code models (``trust_remote_code``) loop over expert modules of their own.
    """
    from harness.compress.adapters import ADAPTERS

    if device_type != "cuda":
        return None
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        if any(hasattr(config, key) for key in ("num_experts", "num_local_experts", "n_routed_experts")):
            return (f"{model_type} is a MoE architecture transformers does not fuse; its experts run one by one "
                    "(slow). Drop trust_remote_code to use transformers' own implementation where there is one")
        return None
    implementation = getattr(config, "_experts_implementation", None) or "grouped_mm"
    if implementation != "grouped_mm":
        return (f"experts run with experts_implementation={implementation!r}, not one grouped GEMM; pass "
                "model_kwargs=dict(experts_implementation='grouped_mm') (needs torch>=2.9 and an SM80+ GPU)")
    return None


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stop_strings:
        found = text.find(stop)
        if stop and found != -1:
            cut = min(cut, found)
    return text[:cut]


def _group_units(group: list[ScoreRequest]) -> list[Unit]:
    """A group as units: one unit over the group's shared prefix, or, where its requests share
    nothing, one unit per request (its tokens but the last as the prefix)."""
    prefix_len = _shared_prefix_len([r.tokens for r in group])
    if prefix_len >= 1:
        return [Unit(group[0].tokens[:prefix_len], list(group))]
    return [Unit(request.tokens[:-1], [request]) for request in group]


def _scores_of(units: list[Unit], flat) -> list[Score]:
    """The Scores of the units' requests (in order), reading per-token (logprobs, greedy) from ``flat``;
    ``logprobs[t - 1]`` is token t's score, positions before ``score_from`` are never read."""
    scores = []
    for unit in units:
        for request in unit.requests:
            logprobs, greedy = next(flat)
            start = request.score_from - 1
            lp, gr = logprobs[start:], greedy[start:]
            scores.append(Score(float(sum(lp)), len(lp), all(gr)))
    return scores


def _shared_prefix_len(sequences: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving at least one token in every sequence."""
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


def _left_pad(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def right_pad(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token lists padded on the right: positions start at 0 in every row."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def check_all_weights_loaded(path, info: dict) -> None:
    """A checkpoint whose weights do not all land in the model is refused: transformers fills missing
    ones at random and only logs it, so such a model would be scored as if it were the checkpoint
    (a per-expert quantised folder loaded into fused experts did exactly that)."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise HarnessError(f"--model_path {path}: {len(missing)} weights of the model are not in the checkpoint "
                           f"({shown}); they would be random: pass a complete checkpoint of this architecture")

