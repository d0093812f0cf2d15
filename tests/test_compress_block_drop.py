"""Block Drop (skip_blocks): the skipped layer really passes its input through, keeps the KV cache's
length right, and plan swaps leave accelerate's device hooks on the layers in place."""
from __future__ import annotations

import copy

import torch
from torch import nn

from harness.compress import apply_plan, reset_plan, snapshot_experts
from harness.compress.apply import SkippedBlock
from harness.compress.plan import CompressionPlan, LayerPlan
from tests.test_apply import IDS, build_model, one_hot


def logits_of(model, ids):
    """Logits without a KV cache (the reference models renumber nothing, so their cache would not fit)."""
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def without_layers(model, skipped):
    """An independent reference: the same model with the skipped decoder layers removed from its list."""
    reference = copy.deepcopy(model)
    kept = [layer for i, layer in enumerate(reference.model.layers) if i not in skipped]
    reference.model.layers = nn.ModuleList(kept)
    reference.config.num_hidden_layers = len(kept)
    return reference


def test_block_drop_equals_the_model_without_that_layer():
    original = build_model("mixtral", num_hidden_layers=3)
    model = apply_plan(copy.deepcopy(original), CompressionPlan(num_layers=3, num_experts=8, skip_blocks=[1]))
    assert isinstance(model.model.layers[1], SkippedBlock)
    assert torch.equal(logits_of(model, IDS), logits_of(without_layers(original, {1}), IDS))
    assert not torch.equal(logits_of(model, IDS), logits_of(original, IDS))
    # the skipped layer's weights leave the model while the plan is on
    skipped = sum(p.numel() for p in original.model.layers[1].parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in original.parameters()) - skipped


def test_skipped_first_layer_keeps_the_cache_length():
    model = build_model("mixtral")
    apply_plan(model, CompressionPlan(num_layers=2, num_experts=8, skip_blocks=[0]))
    with torch.no_grad():
        out = model(IDS, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert cache.get_seq_length() == IDS.shape[1]  # read from layer 0, the skipped one
    with torch.no_grad():
        step = model(IDS[:, -1:], cache=cache, use_cache=True)
    assert cache.get_seq_length() == IDS.shape[1] + 1
    full = logits_of(without_layers(build_model("mixtral"), {0}), torch.cat([IDS, IDS[:, -1:]], dim=1))
    assert torch.allclose(step.logits[:, -1], full[:, -1], atol=1e-5)


def hooked_layers(model) -> list:
    """(hook, hooked forward) of each decoder layer, as accelerate installed them on the instances."""
    return [(layer._hf_hook, layer.__dict__["forward"]) for layer in model.model.layers]


def test_plan_swaps_keep_accelerate_hooks_on_a_dispatched_model():
    from accelerate import dispatch_model

    original = build_model("mixtral", num_hidden_layers=3)
    model = dispatch_model(copy.deepcopy(original), device_map={"": "cpu"}, force_hooks=True)
    hooks = hooked_layers(model)
    calls = []
    for index, (hook, _) in enumerate(hooks):
        pre_forward = hook.pre_forward
        hook.pre_forward = lambda module, *a, index=index, f=pre_forward, **k: (calls.append(index), f(module, *a, **k))[1]

    snap = snapshot_experts(model)
    block_drop = CompressionPlan(num_layers=3, num_experts=8, skip_blocks=[1])
    pruning = CompressionPlan(num_layers=3, num_experts=8, layers={2: LayerPlan(merge=one_hot([0, 3, 5]))}, skip_blocks=[0])
    apply_plan(model, block_drop)
    assert model.compression_plan is block_drop
    assert torch.equal(logits_of(model, IDS), logits_of(without_layers(original, {1}), IDS))
    assert calls == [0, 2]  # the skipped layer's hook does not run; the others still do
    reset_plan(model, snap)
    assert model.compression_plan is None
    apply_plan(model, pruning)
    expected = logits_of(apply_plan(copy.deepcopy(original), copy.deepcopy(pruning)), IDS)
    assert torch.equal(logits_of(model, IDS), expected)
    reset_plan(model, snap)

    assert hooked_layers(model) == hooks  # same hook objects and hooked forwards on every layer
    calls.clear()
    assert torch.equal(logits_of(model, IDS), logits_of(original, IDS))
    assert calls == [0, 1, 2]
