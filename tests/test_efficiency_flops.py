"""Analytic FLOPs per token (harness.efficiency.flops) equal torch.utils.flop_counter's count of a
real forward, on tiny models of every family, with and without plans. Experts and attention run
eagerly so the counter sees every matrix product (it cannot see grouped GEMMs or CPU SDPA)."""
from __future__ import annotations

import pytest
import torch

from harness.compress import apply_plan, reset_plan, snapshot_experts
from harness.compress.plan import CompressionPlan, LayerPlan, one_hot_rows
from harness.efficiency.flops import flops_per_token
from tests.test_apply import ARCHS, build_model, moe_layers


def counted(model, tokens: int = 10) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(4, 290, (2, tokens), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=ids, use_cache=False)
    return counter.get_total_flops() / ids.numel()


def plans(model) -> dict[str, CompressionPlan]:
    layers, E = len(model.model.layers), 8
    moe = moe_layers(model)
    kept = [0, 2, 5, 7]
    merge = torch.rand(4, E, generator=torch.Generator().manual_seed(1))
    merge = merge / merge.sum(1, keepdim=True)
    return {
        "pruning": CompressionPlan.from_kept({i: kept for i in moe}, E, num_layers=layers),
        "top_k 1": CompressionPlan(layers, E, {i: LayerPlan(merge=one_hot_rows(kept, E), top_k=1) for i in moe}),
        "merged, router mapping": CompressionPlan(layers, E, {i: LayerPlan(merge=merge, router=merge) for i in moe}),
        "condensed": CompressionPlan(layers, E, {moe[0]: LayerPlan(mode="condensed", merge=one_hot_rows(kept[:2], E),
                                                                   condensed_weights=torch.tensor([0.7, 0.3]))}),
        "dropped": CompressionPlan(layers, E, {moe[-1]: LayerPlan(mode="dropped")}),
        "skipped block": CompressionPlan(layers, E, skip_blocks=[layers - 1]),
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_analytic_flops_equal_the_flop_counter(arch):
    model = build_model(arch, attn_implementation="eager", experts_implementation="eager")
    full = flops_per_token(model.config, context_len=10)
    assert full["total"] == counted(model)
    config = model.config.to_dict()  # as loaded: the plan rewrites expert count and top-k
    snapshot = snapshot_experts(model)
    for name, plan in plans(model).items():
        apply_plan(model, plan)
        analytic = flops_per_token(type(model.config).from_dict(config), plan, context_len=10)
        assert analytic["total"] == counted(model), name
        reset_plan(model, snapshot)
        assert analytic["total"] < full["total"] or name == "merged, router mapping", name


def test_attention_grows_with_the_context_and_nothing_else_does():
    model = build_model("mixtral")
    short, long = flops_per_token(model.config, context_len=10), flops_per_token(model.config, context_len=110)
    # 2 layers x 4 heads x 100 more positions x (8 + 8) x 2
    assert long["attention_scores"] - short["attention_scores"] == 2 * 4 * 100 * 16 * 2
    assert {k: v for k, v in long.items() if k not in ("attention_scores", "total")} == \
        {k: v for k, v in short.items() if k not in ("attention_scores", "total")}


@pytest.mark.parametrize("arch", ARCHS)
def test_a_condensed_layer_counts_its_experts_as_expert_memory(arch):
    """CD-MoE's condensed layer has no router, and its K experts are still expert memory (all active)."""
    from harness.efficiency.memory import footprint

    model = build_model(arch)
    moe = moe_layers(model)
    full = footprint(model)
    per_layer = full["expert_bytes"] // len(moe)  # every routed layer holds the same 8 experts
    apply_plan(model, plans(model)["condensed"])  # the first MoE layer keeps 2 of 8 experts
    condensed = footprint(model)
    assert condensed["expert_bytes"] == full["expert_bytes"] - per_layer + per_layer * 2 // 8
    assert condensed["active_params"] <= condensed["params"]
