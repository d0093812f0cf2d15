"""resolve(model): one ResolvedMoE per model, the facts apply/snapshot/materialize/describe read.

Expected values are written out by hand from the tiny configs of tests/test_apply.py and the
decoder-layer constructors of transformers (which layers get an MoE block), not read back from
harness.compress.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from harness.compress import apply_plan, reset_plan, snapshot_experts
from harness.compress.adapters import (
    ADAPTERS,
    ResolvedMoE,
    adapter_for,
    decoder_layers,
    expert_count,
    moe_block,
    moe_layer_indices,
    resolve,
)
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError
from tests.test_apply import ARCHS, IDS, build_model, logits_of, one_hot, random_mixing
from tests.tiny import tiny_config

# arch -> (num_layers, MoE layers, top_k, group-limited, n_group, topk_group, renormalise, scaling)
EXPECTED = {
    "mixtral": (2, (0, 1), 2, False, 1, 1, True, 1.0),
    "qwen2_moe": (3, (0, 2), 2, False, 1, 1, False, 1.0),  # mlp_only_layers=[1]; norm_topk_prob defaults off
    "qwen3_moe": (2, (0, 1), 2, False, 1, 1, True, 1.0),
    "olmoe": (2, (0, 1), 2, False, 1, 1, False, 1.0),
    "deepseek_v2": (3, (1, 2), 2, True, 4, 2, False, 1.5),  # first_k_dense_replace=1, group_limited_greedy
    "deepseek_v3": (3, (1, 2), 2, True, 2, 1, True, 2.5),
}


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return build_model(request.param)


def test_resolved_facts_match_the_configs(arch_model):
    moe = resolve(arch_model)
    arch = arch_model.config.model_type
    num_layers, moe_layers, top_k, limited, n_group, topk_group, renorm, scaling = EXPECTED[arch]
    assert (moe.model_type, moe.num_layers, moe.moe_layers, moe.num_experts, moe.top_k) == (
        arch, num_layers, moe_layers, 8, top_k)
    assert (moe.group_limited, moe.n_group, moe.topk_group, moe.renormalize, moe.scaling) == (
        limited, n_group, topk_group, renorm, scaling)
    assert moe.hidden_size == 32 and moe.expert_tensors == ("gate_up_proj", "down_proj")
    assert moe.intermediate_size == (48 if arch in ("mixtral", "olmoe") else 16)
    # the dense-layer rule agrees with the modules transformers built
    assert [i for i, layer in enumerate(arch_model.model.layers) if hasattr(layer.mlp, "experts")] == list(moe_layers)
    assert moe.layers is arch_model.model.layers
    assert [i for i, _ in moe.blocks()] == list(moe_layers)
    # the same facts from the config alone (what describe_plan reads), also from a config.json dict
    for config in (arch_model.config, arch_model.config.to_dict()):
        alone = ResolvedMoE.from_config(config)
        assert (alone.moe_layers, alone.num_experts, alone.top_k, alone.n_group, alone.scaling) == (
            moe_layers, 8, top_k, n_group, scaling)


def test_public_helpers_are_the_resolved_facts(arch_model):
    moe = resolve(arch_model)
    assert adapter_for(arch_model) is moe.adapter is ADAPTERS[arch_model.config.model_type]
    assert expert_count(arch_model) == expert_count(arch_model.config) == 8
    assert moe_layer_indices(arch_model) == list(EXPECTED[arch_model.config.model_type][1])
    assert decoder_layers(arch_model) is arch_model.model.layers
    assert moe_block(moe.adapter, arch_model.model.layers[moe.moe_layers[0]]) is arch_model.model.layers[moe.moe_layers[0]].mlp


def test_resolve_is_cached_and_follows_a_changed_model():
    model = build_model("mixtral")
    first = resolve(model)
    assert resolve(model) is first
    model.model.layers = nn.ModuleList(list(model.model.layers)[:1])  # a different layer list
    shorter = resolve(model)
    assert shorter is not first and shorter.num_layers == 1 and shorter.moe_layers == (0,)
    model.config = copy.deepcopy(model.config)  # a different config object
    model.config.num_experts_per_tok = 1
    assert resolve(model).top_k == 1
    other = build_model("olmoe")
    other.model.layers = model.model.layers  # a different model class and type around the same layers
    assert resolve(other).model_type == "olmoe"


def test_a_compressed_model_resolves_to_the_original_facts():
    original = build_model("deepseek_v3")
    plan = CompressionPlan(num_layers=3, num_experts=8, skip_blocks=[0],
                           layers={1: LayerPlan(mode="dropped"), 2: LayerPlan(merge=one_hot([0, 1, 4, 5]), top_k=1)})
    model = apply_plan(copy.deepcopy(original), plan)
    assert (model.config.n_routed_experts, model.config.num_experts_per_tok) == (4, 1)  # the only routed layer agrees
    again = copy.deepcopy(model)
    again.__dict__.pop("_harness_resolved_moe")  # force a fresh resolution of the compressed copy
    fresh = resolve(again)
    assert (fresh.num_experts, fresh.top_k, fresh.moe_layers) == (8, 2, (1, 2))
    assert expert_count(again) == 8 and expert_count(again.config) == 4


def test_a_model_that_contradicts_its_dense_layer_rule_is_refused():
    model = build_model("deepseek_v2")
    model.config.first_k_dense_replace = 0  # says layer 0 has experts; it was built dense
    with pytest.raises(HarnessError, match="decoder layer 0 .*has no experts"):
        resolve(model)


def test_unsupported_architecture_is_named():
    from transformers import AutoModelForCausalLM

    with pytest.raises(HarnessError, match="unsupported architecture 'llama'"):
        resolve(AutoModelForCausalLM.from_config(tiny_config("llama")))


# ----------------------------------------------------------------------------------------------
# Expert biases: handled by name, like the weights, where a family has them.


@pytest.fixture
def biased_mixtral(monkeypatch):
    """A tiny Mixtral whose adapter row names an optional ``down_proj_bias`` its experts then carry."""
    row = dataclasses.replace(ADAPTERS["mixtral"], optional_expert_tensors=("gate_up_proj_bias", "down_proj_bias"))
    monkeypatch.setitem(ADAPTERS, "mixtral", row)
    model = build_model("mixtral")
    torch.manual_seed(9)
    for layer in model.model.layers:
        layer.mlp.experts.down_proj_bias = nn.Parameter(torch.randn(8, 32))
    return model


def test_expert_biases_are_pruned_merged_and_restored(biased_mixtral):
    model = biased_mixtral
    assert resolve(model).expert_tensors == ("gate_up_proj", "down_proj", "down_proj_bias")  # no gate_up bias here
    original = [layer.mlp.experts.down_proj_bias.detach().clone() for layer in model.model.layers]
    expected_logits = logits_of(model, IDS)
    merge = random_mixing(3, 8, torch.Generator().manual_seed(1))
    plan = CompressionPlan(num_layers=2, num_experts=8, layers={
        0: LayerPlan(merge=one_hot([1, 3, 6])),
        1: LayerPlan(merge=merge, router=random_mixing(3, 8, torch.Generator().manual_seed(2))),
    })
    snap = snapshot_experts(model, device="cpu")
    apply_plan(model, plan)
    biases = [layer.mlp.experts.down_proj_bias for layer in model.model.layers]
    assert torch.equal(biases[0], original[0][[1, 3, 6]])
    assert torch.allclose(biases[1], merge @ original[1], atol=1e-6)
    reset_plan(model, snap)
    assert all(torch.equal(layer.mlp.experts.down_proj_bias, b) for layer, b in zip(model.model.layers, original))
    assert torch.equal(logits_of(model, IDS), expected_logits)
