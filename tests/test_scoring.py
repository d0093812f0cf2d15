"""The model wrapper's scoring and generation against direct computations on a tiny model."""
import random

import pytest
import torch

from harness.models.hf_causal_lm import HFCausalLM, ScoreRequest, cut_at_stop_strings


@pytest.fixture(scope="module")
def lm(tiny_mixtral_path):
    return HFCausalLM(str(tiny_mixtral_path), batch_size=3, max_seq_len=64)


SCORING_PATHS = [
    pytest.param(dict(packed_scoring=True), id="packed-sdpa"),
    pytest.param(dict(packed_scoring=True, model_kwargs=dict(attn_implementation="eager")), id="packed-eager"),
    pytest.param(dict(packed_scoring=False), id="kv-cache"),
]


@pytest.fixture(scope="module", params=SCORING_PATHS)
def scorer(request, tiny_mixtral_path):
    """The wrapper on each scoring path: packed rows (sdpa's bool mask, eager's additive one) and
    the prefix-then-suffixes KV-cache path."""
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=3, max_seq_len=64, **request.param)
    wanted = request.param.get("model_kwargs", {}).get("attn_implementation", "sdpa")
    assert lm.model.config._attn_implementation == wanted
    return lm


def direct_logprobs(model, tokens):
    """log p(token_t | tokens_<t) for t >= 1, from one plain forward of the whole sequence."""
    return [lp for lp, _ in direct_scores(model, tokens)]


def direct_scores(model, tokens):
    """(log p(token_t | tokens_<t), token_t is the argmax) for t >= 1, from one plain forward."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [(logprobs[t - 1, tokens[t]].item(), bool(logits[t - 1].argmax() == tokens[t])) for t in range(1, len(tokens))]


def random_groups(seed, num_groups=9):
    rng = random.Random(seed)
    groups = []
    for g in range(num_groups):
        context = [1] + [rng.randrange(4, 300) for _ in range(rng.randrange(1, 14))]
        group = []
        for _ in range(rng.randrange(1, 5)):
            continuation = [rng.randrange(4, 300) for _ in range(rng.randrange(1, 6))]
            group.append(ScoreRequest(context + continuation, len(context) if g % 3 else 1))
        groups.append(group)
    return groups


def test_scores_equal_a_direct_computation(scorer):
    groups = random_groups(0)
    for group, scores in zip(groups, scorer.score(groups)):
        for request, score in zip(group, scores):
            expected = direct_scores(scorer.model, request.tokens)[request.score_from - 1 :]
            assert score.num_tokens == len(expected)
            assert score.logprob == pytest.approx(sum(lp for lp, _ in expected), abs=1e-5)
            assert score.is_greedy == all(greedy for _, greedy in expected)


def test_is_greedy_is_true_for_the_models_own_continuation(scorer):
    context = [1, 17, 42, 99]
    with torch.no_grad():
        out = scorer.model.generate(torch.tensor([context]), max_new_tokens=4, do_sample=False,
                                    pad_token_id=scorer.pad_token_id)
    own = out[0].tolist()
    other = own[:-1] + [(own[-1] + 1) % 300 + 4]
    [[mine, theirs]] = scorer.score([[ScoreRequest(own, len(context)), ScoreRequest(other, len(context))]])
    assert mine.is_greedy and not theirs.is_greedy


def test_groups_without_a_shared_prefix_and_one_token_suffixes(scorer):
    lm = scorer
    groups = [
        [ScoreRequest([5, 6, 7], 1), ScoreRequest([8, 9], 1)],  # nothing shared
        [ScoreRequest([1, 20, 30], 2), ScoreRequest([1, 20, 31], 2)],  # suffixes of one token
    ]
    for group, scores in zip(groups, lm.score(groups)):
        for request, score in zip(group, scores):
            assert score.logprob == pytest.approx(sum(direct_logprobs(lm.model, request.tokens)[request.score_from - 1 :]), abs=1e-5)


SHARED_CONTEXT = [1] + list(range(10, 40))
FOUR_LABELS = [ScoreRequest(SHARED_CONTEXT + [50 + k, 60 + k], len(SHARED_CONTEXT)) for k in range(4)]


def forward_sizes(lm, groups) -> list[int]:
    """input_ids.numel() of every model forward while ``lm`` scores ``groups``."""
    seen = []
    hook = lm.model.model.embed_tokens.register_forward_hook(lambda m, i, o: seen.append(int(i[0].numel())))
    try:
        lm.score(groups)
    finally:
        hook.remove()
    return seen


def test_packed_scoring_runs_context_and_continuations_in_one_forward(lm):
    # one row: the 31-token context, then each continuation without its last token (1 token each)
    assert forward_sizes(lm, [FOUR_LABELS]) == [len(SHARED_CONTEXT) + 4]


def test_kv_cache_path_runs_the_shared_context_once(tiny_mixtral_path):
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=3, max_seq_len=64, packed_scoring=False)
    seen = forward_sizes(lm, [FOUR_LABELS])
    # one pass over the 31-token context, then the 4 continuations (last token never needs a forward),
    # in chunks of at most batch_size rows
    assert seen[0] == len(SHARED_CONTEXT) and sum(seen[1:]) == 4 * 1 and len(seen) == 1 + -(-4 // lm.batch_size)
    assert sum(seen) < sum(len(r.tokens) for r in FOUR_LABELS) / 3


def test_left_truncation_keeps_the_end(scorer):
    lm = scorer
    long = [1] + [random.Random(1).randrange(4, 300) for _ in range(100)]
    [[score]] = lm.score([[ScoreRequest(long, 95)]])
    kept = long[-lm.max_seq_len :]
    expected = direct_logprobs(lm.model, kept)[95 - (len(long) - lm.max_seq_len) - 1 :]
    assert score.num_tokens == 6 and score.logprob == pytest.approx(sum(expected), abs=1e-5)


def test_batched_left_padded_generation_equals_one_by_one(lm):
    prompts = ["Question: is the sky blue?", "A", "The quick brown fox jumps over"]
    batched = lm.generate(prompts, max_out_len=6)
    single = [lm.generate([p], max_out_len=6)[0] for p in prompts]
    assert batched == single
    # greedy: the same as transformers' generate on the unpadded prompt
    enc = lm.tokenizer(prompts[0], return_tensors="pt")
    out = lm.model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=lm.pad_token_id)
    assert batched[0] == lm.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_generation_respects_max_out_len(lm):
    [text] = lm.generate(["The quick"], max_out_len=3)
    enc = lm.tokenizer("The quick", return_tensors="pt")
    out = lm.model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=lm.pad_token_id)
    assert out.shape[1] - enc["input_ids"].shape[1] <= 3
    assert text == lm.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_stop_strings_cut_the_output(lm):
    [full] = lm.generate(["The quick"], max_out_len=12)
    stop = full[2:4] if len(full) >= 4 else None
    if stop is None:
        pytest.skip("the tiny model generated too little text to place a stop string")
    [cut] = lm.generate(["The quick"], max_out_len=12, stop_strings=[stop])
    assert cut == full[: full.find(stop)]


def test_cut_at_stop_strings_takes_the_earliest():
    assert cut_at_stop_strings("abc\nQuestion: x\n", ["Question:", "\n"]) == "abc"
    assert cut_at_stop_strings("abc", []) == "abc"


def test_out_of_memory_halves_the_batch_and_keeps_the_size_that_fits(tiny_mixtral_path):
    """The KV-cache path batches a number of items: an out-of-memory halves that number."""
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=8, max_seq_len=64, packed_scoring=False)
    real_forward = lm.model.forward

    def forward_that_fits_two(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[0] > 2 and kwargs.get("cache", kwargs.get("past_key_values")) is None:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(*args, **kwargs)

    lm.model.forward = forward_that_fits_two
    groups = random_groups(3, num_groups=5)
    scores = lm.score(groups)
    assert lm.batch_size == 2
    lm.model.forward = real_forward
    reference = HFCausalLM(str(tiny_mixtral_path), batch_size=8, max_seq_len=64).score(groups)
    assert [s.logprob for g in scores for s in g] == pytest.approx([s.logprob for g in reference for s in g], abs=1e-5)


def test_out_of_memory_halves_the_token_budget_of_packed_batches(tiny_mixtral_path):
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=8, max_seq_len=64, max_batch_tokens=400)
    real_forward = lm.model.forward
    seen = []

    def forward_that_fits_60_tokens(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.numel() > 60:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        seen.append(ids.numel())
        return real_forward(*args, **kwargs)

    lm.model.forward = forward_that_fits_60_tokens
    groups = random_groups(3, num_groups=9)
    scores = lm.score(groups)
    assert lm.collator.fits_tokens is not None and lm.collator.fits_tokens <= 60 and max(seen) <= 60
    lm.model.forward = real_forward
    for group, group_scores in zip(groups, scores):
        for request, score in zip(group, group_scores):
            expected = direct_logprobs(lm.model, request.tokens)[request.score_from - 1 :]
            assert score.logprob == pytest.approx(sum(expected), abs=1e-5)


def test_sampling_is_reproducible_with_a_seed_and_differs_from_greedy(lm):
    prompts = ["The quick brown fox"] * 4
    torch.manual_seed(0)
    first = lm.generate(prompts, max_out_len=8, do_sample=True, temperature=1.5)
    torch.manual_seed(0)
    second = lm.generate(prompts, max_out_len=8, do_sample=True, temperature=1.5)
    assert first == second
    assert len(set(first)) > 1  # four samples of a random model at temperature 1.5 do not all agree


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_scores_do_not_depend_on_the_batch_size(tiny_mixtral_path, batch_size, packed):
    groups = random_groups(3, num_groups=5)
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=batch_size, max_seq_len=64, packed_scoring=packed)
    for group, scores in zip(groups, lm.score(groups)):
        for request, score in zip(group, scores):
            expected = direct_logprobs(lm.model, request.tokens)[request.score_from - 1 :]
            assert score.logprob == pytest.approx(sum(expected), abs=1e-5)


def test_slow_experts_warning_on_gpu_only_when_experts_do_not_run_as_one_grouped_gemm():
    from types import SimpleNamespace

    from harness.models.hf_causal_lm import slow_experts_warning

    fused = SimpleNamespace(model_type="mixtral", _experts_implementation="grouped_mm")
    looped = SimpleNamespace(model_type="mixtral", _experts_implementation="eager")
    remote = SimpleNamespace(model_type="deepseek", n_routed_experts=64)  # deepseek-moe-16b remote code
    dense = SimpleNamespace(model_type="llama")
    assert slow_experts_warning(fused, "cuda") is None and slow_experts_warning(dense, "cuda") is None
    assert "grouped_mm" in slow_experts_warning(looped, "cuda")
    assert "trust_remote_code" in slow_experts_warning(remote, "cuda")
    assert all(slow_experts_warning(c, "cpu") is None for c in (fused, looped, remote))


def test_a_single_device_is_where_the_weights_load(tiny_mixtral_path, monkeypatch):
    """device= (a torchrun rank's GPU) goes to from_pretrained, not a CPU load followed by .to()."""
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    HFCausalLM(str(tiny_mixtral_path), device="cpu", max_seq_len=64)
    HFCausalLM(str(tiny_mixtral_path), device="cpu", device_map="auto", max_seq_len=64)
    assert seen == ["cpu", "auto"]
