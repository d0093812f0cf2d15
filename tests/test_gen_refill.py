"""Greedy generation with refilled rows (``harness/models/refill.py``).

The reference is transformers' own ``generate`` on each prompt alone (no padding, no neighbours),
with the same end-of-text, stop strings, ``max_new_tokens`` and ``min_new_tokens``: the refilled
rows must give the same text item by item."""
import collections
import random

import pytest
import torch
from transformers import StoppingCriteriaList

from harness.models.api import GenerationRequest
from harness.models.hf_causal_lm import HFCausalLM, StopOnStrings, cut_at_stop_strings
from harness.models.refill import RefillDecoder
from tests.test_apply import ARCHS, build_model


@pytest.fixture(scope="module")
def tokenizer(tiny_mixtral_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_mixtral_path)


def prompts(seed: int, n: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(4, 300) for _ in range(rng.randrange(2, 14))] for _ in range(n)]


def alone(lm: HFCausalLM, request: GenerationRequest) -> str:
    """transformers' generate on one unpadded prompt."""
    ids = torch.tensor([request.tokens])
    stops = list(request.stop_strings)
    kwargs = {"min_new_tokens": request.min_out_len} if request.min_out_len else {}
    criteria = StoppingCriteriaList([StopOnStrings(lm.tokenizer, stops, ids.shape[1])] if stops else [])
    with torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=request.max_out_len,
                                do_sample=False, pad_token_id=lm.pad_token_id, stopping_criteria=criteria, **kwargs)
    return cut_at_stop_strings(lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), stops)


def frequent_token_as_eos(lm: HFCausalLM, tokens: list[list[int]]) -> None:
    """Make the token the model emits most often its end-of-text, so outputs end at different steps."""
    lm.model.generation_config.eos_token_id = None
    counts = collections.Counter()
    for t in tokens[:4]:
        ids = torch.tensor([t])
        with torch.no_grad():
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                    pad_token_id=lm.pad_token_id)
        counts.update(out[0, ids.shape[1]:].tolist())
    lm.model.generation_config.eos_token_id = counts.most_common(1)[0][0]


def joins_into_running_rows(monkeypatch) -> list[int]:
    """How many rows were admitted while other rows were in flight (a refill), per admission."""
    joined = []
    real = RefillDecoder._join

    def spy(self, rows, cache, mask):
        if self.active:
            joined.append(len(rows))
        return real(self, rows, cache, mask)

    monkeypatch.setattr(RefillDecoder, "_join", spy)
    return joined


@pytest.mark.parametrize("arch", ARCHS)
def test_refilled_greedy_outputs_equal_generate_item_by_item_for_every_moe_family(arch, tokenizer, monkeypatch):
    lm = HFCausalLM(arch, model=build_model(arch), tokenizer=tokenizer, batch_size=3, max_seq_len=64, pad_token_id=3)
    tokens = prompts(1, 9)
    frequent_token_as_eos(lm, tokens)
    requests = [GenerationRequest(t, max_out_len=4 + (k % 3) * 5) for k, t in enumerate(tokens)]
    joined = joins_into_running_rows(monkeypatch)
    got = lm.generate(requests)
    assert joined, "no finished row was refilled while others ran"
    assert got == [alone(lm, r) for r in requests]


def test_stop_strings_min_out_len_and_mixed_settings(tiny_mixtral_path, monkeypatch):
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=2, max_seq_len=64)
    tokens = prompts(2, 8)
    frequent_token_as_eos(lm, tokens)
    plain = [alone(lm, GenerationRequest(t, 12)) for t in tokens]
    stop = next(text[len(text) // 2] for text in plain if len(text) > 3)  # a character some outputs reach
    requests = [GenerationRequest(t, max_out_len=12 if k % 2 else 7, stop_strings=(stop,) if k % 3 else (),
                                  min_out_len=5 if k % 4 == 0 else None) for k, t in enumerate(tokens)]
    joined = joins_into_running_rows(monkeypatch)
    got = lm.generate(requests)
    assert got == [alone(lm, r) for r in requests]
    assert any(stop in p for p in plain) and joined


def test_batches_report_as_the_collator_made_them_and_rows_carry_over(tiny_mixtral_path):
    """Progress is reported batch by batch (resumable runs rely on that) while a row freed in
    batch k already decodes a prompt of batch k + 1."""
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=2, max_seq_len=64)
    tokens = prompts(3, 8)
    frequent_token_as_eos(lm, tokens)
    requests = [GenerationRequest(t, max_out_len=10) for t in tokens]

    def run():
        reported, steps = [], []
        hook = lm.model.get_input_embeddings().register_forward_hook(
            lambda m, i, o: steps.append(1) if i[0].shape[1] == 1 else None)
        try:
            texts = lm.generate(requests, on_batch=lambda positions, texts: reported.append(len(positions)))
        finally:
            hook.remove()
        return texts, reported, len(steps)

    got, reported, steps = run()
    lm.refill_rows = False  # the plain loop: HF generate per batch
    plain, plain_reported, plain_steps = run()
    assert reported == plain_reported == [2, 2, 2, 2]
    assert got == plain == [alone(lm, r) for r in requests]
    assert steps < plain_steps  # rows that finished early were refilled instead of idling


def test_out_of_memory_in_a_refilled_batch_halves_it_and_gives_the_same_texts(tiny_mixtral_path, monkeypatch):
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=4, max_seq_len=64)
    requests = [GenerationRequest(t, 6) for t in prompts(4, 7)]
    expected = [alone(lm, r) for r in requests]
    real, failed = RefillDecoder._step, []

    def step(self):
        if len(self.active) > 2:
            failed.append(len(self.active))
            raise torch.OutOfMemoryError("simulated")
        return real(self)

    monkeypatch.setattr(RefillDecoder, "_step", step)
    assert lm.generate(requests) == expected
    assert failed and lm.collator.current() == 2


def test_sampling_and_sliding_window_caches_go_through_generate(tiny_mixtral_path, tokenizer, monkeypatch):

    calls = []
    real = HFCausalLM._generate_hf
    monkeypatch.setattr(HFCausalLM, "_generate_hf", lambda self, batch: calls.append(len(batch)) or real(self, batch))
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=2, max_seq_len=64)
    torch.manual_seed(0)
    lm.generate(prompts(5, 2), max_out_len=3, do_sample=True)
    assert calls == [2]
    calls.clear()
    lm.model.generation_config.repetition_penalty = 1.3  # a logits processor: not plain greedy
    lm.generate(prompts(5, 2), max_out_len=3)
    assert calls == [2]

    calls.clear()
    lm = HFCausalLM("sliding", model=build_model("mixtral", sliding_window=4), tokenizer=tokenizer, batch_size=2,
                    max_seq_len=64, pad_token_id=3)
    requests = [GenerationRequest(t, 6) for t in prompts(6, 4)]
    got = lm.generate(requests)
    assert calls == [2, 2] and lm._cache_refillable is False
    assert got == [alone(lm, r) for r in requests]
