"""The packed scoring layout, checked by hand on small cases."""
from types import SimpleNamespace

import pytest
import torch

from harness.models.hf_causal_lm import HFCausalLM, ScoreRequest
from harness.models.packed_scoring import Unit, attention_allowed, pack, packing_mode, packing_supported
from tests.test_apply import ARCHS, build_model


def test_layout_of_one_context_with_two_continuations():
    # context [1, 2, 3]; continuations [4, 5] and [6, 7, 8]; scored from the continuation on
    unit = Unit([1, 2, 3], [ScoreRequest([1, 2, 3, 4, 5], 3), ScoreRequest([1, 2, 3, 6, 7, 8], 3)])
    batch = pack([[unit]], pad_token_id=0)
    # each continuation without its last token: [4] and [6, 7]
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 6, 7]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 3, 4]]
    # no target inside the context: only its last position's logits, then every continuation token
    assert batch.keep.tolist() == [[False, False, True, True, True, True]]
    # kept rows: 0 <- position 2, 1 <- position 3, 2 <- position 4, 3 <- position 5
    # request 1 targets t = 1..4 (tokens 2, 3, 4, 5): read at positions 0, 1 (unused), 2, 3
    # request 2 targets t = 1..5 (tokens 2, 3, 6, 7, 8): positions 0, 1 (unused), 2, 4, 5
    assert batch.reads == [[-1, -1, 0, 1], [-1, -1, 0, 2, 3]]
    allowed = batch.allowed[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],  # token 4 sees the context and itself
        [1, 1, 1, 0, 1, 0],  # token 6 does not see token 4
        [1, 1, 1, 0, 1, 1],
    ]


def test_targets_inside_the_context_keep_its_logits_and_rows_are_right_padded():
    units = [Unit([1, 2], [ScoreRequest([1, 2, 3], 1)]), Unit([5, 6, 7, 8], [ScoreRequest([5, 6, 7, 8, 9, 10], 4)])]
    batch = pack([[u] for u in units], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 0, 0, 0], [5, 6, 7, 8, 9]]
    assert batch.keep.tolist() == [[True, True, False, False, False], [False, False, False, True, True]]
    assert batch.reads == [[0, 1], [-1, -1, -1, 2, 3]]
    pad_query = batch.allowed[0, 0, 3].int().tolist()
    assert pad_query == [0, 0, 1, 1, 0]  # padding is a unit of its own: it sees earlier padding only
    assert batch.position_ids[0].tolist() == [0, 1, 0, 1, 2]


def test_segments_to_mask():
    # one unit: context, continuation 1, continuation 2; then padding
    allowed = attention_allowed(torch.tensor([[0, 0, 0, -1]]), torch.tensor([[0, 1, 2, 0]]))[0, 0].int().tolist()
    assert allowed == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]


def test_eager_mask_is_additive():
    batch = pack([[Unit([1, 2], [ScoreRequest([1, 2, 3, 4], 2), ScoreRequest([1, 2, 5, 6], 2)])]], pad_token_id=0)
    additive = batch.attention_mask("eager", torch.float32)
    assert additive.dtype == torch.float32
    assert torch.equal(additive == 0, batch.allowed)
    assert torch.equal(batch.attention_mask("sdpa", torch.float32), batch.allowed)


def test_packing_mode_follows_the_attention_and_refuses_a_short_sliding_window():
    def config(**fields):
        return SimpleNamespace(_attn_implementation="sdpa", **fields)

    assert packing_supported(config(), 10_000)
    assert packing_supported(SimpleNamespace(_attn_implementation="eager"), 100)
    assert packing_mode(SimpleNamespace(_attn_implementation="flash_attention_2"), 100) == "varlen"
    assert packing_mode(SimpleNamespace(_attn_implementation="flex_attention"), 100) == "flex"
    assert packing_mode(config(), 100) == "mask"
    assert not packing_supported(SimpleNamespace(_attn_implementation="something_else"), 100)
    assert packing_supported(config(sliding_window=4096), 4096)
    assert not packing_supported(config(sliding_window=4096), 4097)
    assert packing_supported(config(sliding_window=16, use_sliding_window=False), 100)


def test_models_with_a_short_sliding_window_fall_back_to_the_kv_cache_path(tiny_mixtral_path, monkeypatch):
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=3, max_seq_len=64)
    calls = []
    monkeypatch.setattr(lm.model.config, "sliding_window", 2, raising=False)
    monkeypatch.setattr(lm, "_score_on_cache", lambda units: calls.append(len(units)) or ([[0.0] * 3], [[True] * 3]))
    lm.score([[ScoreRequest([1, 2, 3, 4], 3)]])
    assert calls == [1]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_scores_equal_separate_sequences_for_every_moe_family(arch, attention, tiny_mixtral_path):
    """Custom 4D masks, restarted positions and boolean logits_to_keep work in each family's modeling."""
    from transformers import AutoTokenizer

    model = build_model(arch)
    model.config._attn_implementation = attention
    assert packing_supported(model.config, 16)
    tokenizer = AutoTokenizer.from_pretrained(tiny_mixtral_path)
    packed = HFCausalLM(arch, model=model, tokenizer=tokenizer, batch_size=4, max_seq_len=64, pad_token_id=3)
    on_cache = HFCausalLM(arch, model=model, tokenizer=tokenizer, batch_size=4, max_seq_len=64, pad_token_id=3,
                          packed_scoring=False)
    groups = [[ScoreRequest([1, 9, 8, 7] + tail, 4) for tail in ([20, 21, 22], [30], [40, 41])],
              [ScoreRequest([1, 5, 6, 50, 51], 1), ScoreRequest([1, 5, 6, 60], 1)]]
    for scorer in (packed, on_cache):
        for group, scores in zip(groups, scorer.score(groups)):
            for request, score in zip(group, scores):
                with torch.no_grad():
                    logits = model(torch.tensor([request.tokens])).logits[0].float()
                logprobs = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(request.tokens[1:])[:, None])
                assert score.logprob == pytest.approx(logprobs[request.score_from - 1 :].sum().item(), abs=1e-5)
