"""Mask memory of packed scoring: dense masks stay under ``MASK_LIMIT`` entries per forward, and
flex attention gets a ``BlockMask`` (no L x L tensor) that scores the same as the dense mask."""
import pytest

from harness.models import hf_causal_lm, packed_scoring
from harness.models.hf_causal_lm import HFCausalLM
from tests.test_apply import build_model
from tests.test_cross_packing import expected_scores
from tests.test_scoring import random_groups


@pytest.fixture(scope="module")
def tokenizer(tiny_mixtral_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_mixtral_path)


def test_dense_masks_stay_under_the_limit_and_wider_rows_use_the_kv_cache(tokenizer, monkeypatch):
    limit = 3 * 40 * 40
    monkeypatch.setattr(hf_causal_lm, "MASK_LIMIT", limit)
    built, cached = [], []
    real_allowed, real_cache = packed_scoring.attention_allowed, HFCausalLM._score_on_cache
    monkeypatch.setattr(packed_scoring, "attention_allowed",
                        lambda unit_ids, segments: built.append(tuple(unit_ids.shape)) or real_allowed(unit_ids, segments))
    monkeypatch.setattr(HFCausalLM, "_score_on_cache", lambda self, units: cached.append(len(units)) or real_cache(self, units))
    model = build_model("mixtral")
    lm = HFCausalLM("tiny", model=model, tokenizer=tokenizer, batch_size=8, max_seq_len=64, pad_token_id=3,
                    max_batch_tokens=4000)
    groups = random_groups(7, num_groups=12)
    scores = lm.score(groups)
    assert built and all(rows * width * width <= limit for rows, width in built)
    for group_scores, expected in zip(scores, expected_scores(model, groups)):
        assert [s.logprob for s in group_scores] == pytest.approx(expected, abs=1e-5)

    built.clear()
    monkeypatch.setattr(hf_causal_lm, "MASK_LIMIT", 10 * 10)  # narrower than any row: no dense mask at all
    scores = lm.score(groups)
    assert not built and cached
    for group_scores, expected in zip(scores, expected_scores(model, groups)):
        assert [s.logprob for s in group_scores] == pytest.approx(expected, abs=1e-5)


def test_flex_attention_block_mask_scores_equal_the_dense_mask(tokenizer, monkeypatch):
    """transformers runs flex attention through ``torch.compile``; on CPU inductor took minutes for
    the first shape and failed on another (bench/RESULTS.md), so the test runs torch's own
    ``flex_attention`` uncompiled: the same kernel semantics, evaluated eagerly."""
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "__call__", lambda self: flex_attention)
    model = build_model("mixtral")
    lm = HFCausalLM("tiny", model=model, tokenizer=tokenizer, batch_size=4, max_seq_len=64, pad_token_id=3,
                    max_batch_tokens=96)
    groups = random_groups(8, num_groups=3)
    dense = [[s.logprob for s in g] for g in lm.score(groups)]

    masks, dense_built = [], []
    real_block = packed_scoring.block_mask
    monkeypatch.setattr(packed_scoring, "block_mask", lambda u, s: masks.append(real_block(u, s)) or masks[-1])
    monkeypatch.setattr(packed_scoring, "attention_allowed", lambda *a: dense_built.append(1))
    model.set_attn_implementation("flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    flex = [[s.logprob for s in g] for g in lm.score(groups)]
    assert masks and all(isinstance(m, BlockMask) for m in masks) and not dense_built
    assert [x for g in flex for x in g] == pytest.approx([x for g in dense for x in g], abs=1e-5)
    assert [x for g in flex for x in g] == pytest.approx([x for g in expected_scores(model, groups) for x in g], abs=1e-5)
