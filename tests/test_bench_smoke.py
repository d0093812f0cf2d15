"""Smoke tests of the benchmark scripts' core functions on a tiny random model and a few real items:
the three scorers agree with each other, token counts match a direct count, generation variants
agree, a plan swap leaves the model as it was, and the footprint variants hold the expert bytes a
direct count gives. No timing is asserted."""
import argparse

import pytest
import torch

from bench import bench_expert_footprint, bench_gen, bench_ppl, bench_search_swap, common
from harness.models.hf_causal_lm import HFCausalLM


@pytest.fixture(scope="module")
def tiny_lm(tiny_mixtral_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_mixtral_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_mixtral_path, dtype=torch.float32).eval()
    return HFCausalLM("tiny", model=model, tokenizer=tokenizer, batch_size=2, max_seq_len=512, max_out_len=4,
                      add_special_tokens=False)


def test_token_counter_counts_padded_and_real_tokens(tiny_lm):
    ids = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 3]])
    count, _ = common.count_tokens(tiny_lm.model, lambda: tiny_lm.model(ids), pad_ids={3})
    assert (count.forwards, count.padded, count.real) == (1, 8, 5)


def test_interleaved_timings_repeat_each_variant():
    calls = []
    timings, results = common.interleaved_timings({"a": lambda: calls.append("a") or 1,
                                                   "b": lambda: calls.append("b") or 2}, repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert results == {"a": 1, "b": 2} and len(timings["a"].seconds) == 3


def test_hellaswag_and_boolq_items_follow_lm_eval(shared_dir):
    hs = bench_ppl.hellaswag_items(3, shared_dir / "data")
    assert hs[0].context == "Roof shingle removal: A man is sitting on a roof. he"
    assert hs[0].continuations[3] == " starts pulling up roofing on a roof." and hs[0].gold == 3
    assert bench_ppl.lm_eval_preprocess("A [header] b [title] c  d ") == "A b. c d"
    arc = bench_ppl.arc_easy_items(2, shared_dir / "data")
    assert arc[0].context.startswith("Question: Which statement") and arc[0].context.endswith("\nAnswer:")
    assert len(arc[0].continuations) == 4 and arc[0].gold == 0
    bq = bench_ppl.boolq_items(2, shared_dir / "data")
    assert bq[0].context.endswith("?\nAnswer:") and bq[0].continuations == [" no", " yes"]


def test_three_scorers_agree_and_ours_feeds_fewer_tokens(tiny_lm, shared_dir):
    items = bench_ppl.hellaswag_items(4, shared_dir / "data")
    model, tokenizer = tiny_lm.model, tiny_lm.tokenizer
    variants = {
        "ours": lambda it: bench_ppl.score_ours(tiny_lm, it, 2),
        "opencompass-style": lambda it: bench_ppl.score_opencompass_style(model, tokenizer, it, 2, tiny_lm.pad_token_id),
    }
    # the tiny tokenizer adds <s> by default; ours runs without special tokens, so lm-eval must too
    lm_eval_model = bench_ppl.make_lm_eval(model, tokenizer, 2, torch.float64, add_bos_token=False)
    if lm_eval_model is not None:
        variants["lm-eval HFLM"] = lambda it: bench_ppl.score_lm_eval(lm_eval_model, it)
    measured = bench_ppl.measure(variants, model, items, {tiny_lm.pad_token_id, 0}, repeats=1, device="cpu")
    for name in variants:
        assert bench_ppl.max_abs_diff(measured["ours"]["scores"], measured[name]["scores"]) < 1e-4, name
    # the per-label loop feeds every full sequence once; count them directly
    direct = sum(len(sum(bench_ppl.encode_pair(tokenizer, i.context, c), [])) for i in items for c in i.continuations)
    assert measured["opencompass-style"]["tokens"].real == direct
    assert measured["ours"]["tokens"].real < direct  # each context runs once, not four times
    assert all(m["tokens"].real <= m["tokens"].padded for m in measured.values())
    lines = bench_ppl.check_targets({"HellaSwag": measured})
    assert any("forward tokens, opencompass-style / ours" in line for line in lines)
    assert any(line.startswith("- HellaSwag padding share") for line in lines)
    assert bench_ppl.padding_share(common.TokenCount(1, 100, 96)) == pytest.approx(0.04)


def test_generation_variants_agree_without_padding(tiny_lm, shared_dir):
    prompts = bench_gen.gsm8k_prompts(3, shared_dir / "data")
    ours = bench_gen.generate_ours(tiny_lm, prompts, 1, 4)
    plain = bench_gen.generate_plain(tiny_lm.model, tiny_lm.tokenizer, prompts, 1, 4, tiny_lm.pad_token_id)
    assert ours == plain and bench_gen.agreement(ours, plain) == 100.0
    assert bench_gen.agreement(["a", "b"], ["a", "c"]) == 50.0


def test_swap_measurement_restores_the_model():
    tokenizer = bench_search_swap.char_tokenizer()
    model = bench_search_swap.random_mixtral(len(tokenizer), num_hidden_layers=2, hidden_size=32,
                                             intermediate_size=32)
    lm = HFCausalLM("random", model=model, tokenizer=tokenizer, batch_size=4, max_seq_len=128)
    subject = bench_search_swap.Subject("random", lm, bench_search_swap.toy_task(6))
    ids = torch.tensor([tokenizer("sort: 3 1 2 = 1 2 3")["input_ids"]])
    before = model(ids).logits
    plan = bench_search_swap.pruning_plan(model, keep=3)
    assert all(len(plan.kept_experts(layer)) == 3 for layer in plan.layers)
    rows = bench_search_swap.measure_subject(subject, keep=3, repeats=1, device=torch.device("cpu"))
    assert [r[1] for r in rows] == ["none (reset only)", "pruning", "merging"]
    assert all(r[6] > 0 and 0 <= float(r[7]) <= 100 for r in rows)
    assert torch.equal(model(ids).logits, before)


TINY_MIXTRAL_SHAPE = dict(model_type="mixtral", vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                          num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
                          max_position_embeddings=128, rope_theta=1e4, rms_norm_eps=1e-5)


def test_footprint_variants_hold_the_expected_expert_bytes(monkeypatch):
    monkeypatch.setitem(common.REAL_SHAPES, bench_expert_footprint.SHAPE, TINY_MIXTRAL_SHAPE)
    monkeypatch.setattr(bench_expert_footprint, "EEP_PLAN", common.REPO / "no-such-plan.pth")  # the random plan
    args = argparse.Namespace(layers=2, batch_size=2, prompt_len=5, new_tokens=3, repeats=1)
    cpu = torch.device("cpu")
    variants, source = bench_expert_footprint.variants(args.layers)
    assert source.startswith("random 4 of 8")
    results = {v.name: bench_expert_footprint.measure(v, args, cpu, torch.float32) for v in variants}
    # fused experts per layer: gate_up (E, 2I, H) + down (E, H, I), fp32
    full = 2 * 3 * 8 * 32 * 48 * 4
    expected = {"full (8 experts, top-2)": full, "budget 4 (top-2)": full // 2, "top-1 (8 experts)": full,
                "budget 4, top-1": full // 2}
    assert {name: r["expert_bytes"] for name, r in results.items()} == expected
    assert results["budget 4 (top-2)"]["model_bytes"] <= results["full (8 experts, top-2)"]["model_bytes"] - full // 2
    assert all(r["decode_s"] > 0 and r["tokens_per_s"] > 0 for r in results.values())
    lines = bench_expert_footprint.report(results, cpu, torch.float32, args, source)
    assert "budget-4 expert memory / full: 0.5 (target <= 0.55) -> MET" in lines[-1]


def test_footprint_top1_variant_routes_each_token_to_one_expert(monkeypatch):
    from harness.compress.adapters import adapter_for, decoder_layers, moe_block
    from harness.compress.apply import apply_plan

    monkeypatch.setitem(common.REAL_SHAPES, bench_expert_footprint.SHAPE, TINY_MIXTRAL_SHAPE)
    model = bench_expert_footprint.mixtral_shape_model(2, torch.device("cpu"), torch.float32)
    apply_plan(model, bench_expert_footprint.with_top_k(None, 2, 1))
    adapter = adapter_for(model)
    router = getattr(moe_block(adapter, decoder_layers(model)[0]), adapter.router_attr)
    _, weights, indices = router(torch.randn(5, 32))
    assert indices.shape == (5, 1) and torch.allclose(weights, torch.ones_like(weights))


def test_footprint_budget_plan_is_the_eep_boolq_plan(shared_dir):
    plan, source = bench_expert_footprint.budget_plan(2)
    assert "boolq_budget_4.pth" in source and plan.num_layers == 2
    assert sorted(plan.layers) == [0, 1] and all(plan.budget(i) == 4 for i in (0, 1))
