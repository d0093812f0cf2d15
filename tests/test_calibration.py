"""Calibration statistics against direct computations written here, on tiny random models of every family.

References run one sample at a time (no padding at all) and read the weights directly: routing from
the router weight and the family's rule (tests/test_apply.py's ``routing_rules``), expert outputs
from the fused tensors, similarities from ``output_hidden_states``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.compress import apply_plan, reset_plan, snapshot_experts
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.methods.base import MethodInputs, ModelShape, build_plan
from harness.methods.calibration import calibrate
from harness.methods.calibration_store import load_stats, save_stats
from tests.test_apply import ARCHS, build_model, routing_rules

SAMPLES = [[5, 17, 42, 99, 120, 7, 230, 31, 64, 11, 250, 8], [9, 44, 180, 3 + 10, 77, 201, 150], [66, 21, 290, 14, 5, 91, 33, 48, 112]]


@pytest.fixture(scope="module", params=ARCHS)
def family(request):
    model = build_model(request.param)
    return model, calibrate(model, SAMPLES, batch_size=3)


def expert_out(model, layer, e, x):
    experts = model.model.layers[layer].mlp.experts
    gate, up = (x @ experts.gate_up_proj[e].T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ experts.down_proj[e].T


def direct_routing(model, layer, x):
    """(T, E) scores over all E and dense final weights, written from the family's rule (no groups
    for the families without them; DeepSeek's groups read from the router's own top-k)."""
    rule = routing_rules(model.config)
    gate = model.model.layers[layer].mlp.gate
    logits = x.double() @ gate.weight.double().T
    scores = logits.softmax(-1) if rule["score"] == "softmax" else logits.sigmoid()
    bias = getattr(gate, "e_score_correction_bias", None)
    choice = scores + (bias.double() if bias is not None else 0.0)
    picked = choice.topk(model.config.num_experts_per_tok, dim=-1).indices
    if rule["groups"] is not None:  # group-limited selection: the family's own choice of experts
        picked = gate(x)[2]
    w = scores.gather(1, picked)
    if rule["renorm"]:
        w = w / w.sum(-1, keepdim=True)
    dense = torch.zeros_like(scores).scatter(1, picked, w * rule["scale"])
    return scores, dense, picked


def test_counts_gates_scores_and_reap_equal_a_per_token_loop(family):
    model, stats = family
    e = 8
    for layer in stats.counts:
        counts = torch.zeros(e, dtype=torch.long)
        gate_sum, score_sum, reap = (torch.zeros(e, dtype=torch.float64) for _ in range(3))
        outputs = torch.zeros(e, 32, dtype=torch.float64)
        for sample in SAMPLES:  # one sample, no padding; MoE inputs hooked on the block
            seen = {}
            handle = model.model.layers[layer].mlp.register_forward_hook(lambda m, a, o: seen.setdefault("x", a[0][0]))
            with torch.no_grad():
                model(input_ids=torch.tensor([sample]))
            handle.remove()
            x = seen["x"]
            with torch.no_grad():
                scores, dense, picked = direct_routing(model, layer, x)
                for t in range(x.shape[0]):
                    score_sum += scores[t]
                    for j in range(e):
                        f = expert_out(model, layer, j, x[t]).double()
                        outputs[j] += f
                        if j in picked[t].tolist():
                            counts[j] += 1
                            gate_sum[j] += dense[t, j]
                            reap[j] += dense[t, j] * f.norm()
        assert torch.equal(stats.counts[layer], counts)
        assert torch.allclose(stats.gate_sum[layer], gate_sum, atol=1e-4)
        assert torch.allclose(stats.score_sum[layer], score_sum, atol=1e-4)
        assert torch.allclose(stats.reap_sum[layer], reap, atol=1e-4)
        assert torch.allclose(stats.expert_output_sum[layer], outputs, atol=1e-4)
        assert stats.num_tokens == sum(len(s) for s in SAMPLES)


def test_statistics_do_not_depend_on_the_batch_size(family):
    model, stats = family
    one = calibrate(model, SAMPLES, batch_size=1)
    for name in ("counts", "gate_sum", "score_sum", "reap_sum", "expert_output_sum", "logit_gram", "moe_cos_sum",
                 "block_cos_sum", "moe_inputs", "skip_ratios"):
        for layer, value in getattr(stats, name).items():
            other = getattr(one, name)[layer]
            assert other.shape == value.shape, name
            assert torch.allclose(other.double(), value.double(), rtol=1e-4, atol=1e-4), (name, layer)
    assert torch.allclose(one.hidden_cos_sum, stats.hidden_cos_sum, atol=1e-4)


def test_layer_and_block_similarities_equal_cosines_of_output_hidden_states():
    model = build_model("mixtral", num_hidden_layers=3)
    stats = calibrate(model, SAMPLES, batch_size=2)
    block, moe = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    span = 0.0
    snapshot = snapshot_experts(model)
    for sample in SAMPLES:
        ids = torch.tensor([sample])
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states  # the last one is normed
            for i in range(2):
                block[i] += F.cosine_similarity(hs[i][0], hs[i + 1][0], dim=-1).double().sum()
            span += float(F.cosine_similarity(hs[0][0], hs[2][0], dim=-1).double().sum())
            for layer in range(2):  # MoE sub-layer input = layer output with its MoE dropped
                plan = CompressionPlan(num_layers=3, num_experts=8, layers={layer: LayerPlan(mode="dropped")})
                apply_plan(model, plan)
                mid = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
                reset_plan(model, snapshot)
                moe[layer] += F.cosine_similarity(mid[0], hs[layer + 1][0], dim=-1).double().sum()
    for i in range(2):
        assert abs(float(stats.block_cos_sum[i]) - float(block[i])) < 1e-4
        assert abs(float(stats.moe_cos_sum[i]) - float(moe[i])) < 1e-4
    assert abs(float(stats.hidden_cos_sum[0, 2]) - span) < 1e-4
    shape = ModelShape.of(model)
    discrete = build_plan("block_drop", MethodInputs(shape, None, stats=stats, drop_n=1))
    all_blocks = [float(stats.block_cos_sum[i]) for i in range(3)]
    assert discrete.skip_blocks == [all_blocks.index(max(all_blocks))]
    run = build_plan("block_drop", MethodInputs(shape, None, stats=stats, drop_n=2), mode="consecutive")
    spans = [float(stats.hidden_cos_sum[i, i + 2]) for i in range(2)]
    assert run.skip_blocks == [spans.index(max(spans)), spans.index(max(spans)) + 1]
    dropped = build_plan("layer_drop", MethodInputs(shape, None, stats=stats, drop_n=1))
    most_similar = max(range(3), key=lambda i: float(stats.moe_cos_sum[i]))
    assert list(dropped.layers) == [most_similar] and dropped.layers[most_similar].mode == "dropped"


def test_statistics_survive_a_safetensors_round_trip(family, tmp_path):
    _, stats = family
    back = load_stats(save_stats(stats, tmp_path / "s.safetensors"))
    assert back.num_tokens == stats.num_tokens and back.settings == stats.settings
    for layer in stats.counts:
        assert torch.equal(back.reap_sum[layer], stats.reap_sum[layer])
        assert torch.equal(back.moe_inputs[layer], stats.moe_inputs[layer])
    assert torch.equal(back.hidden_cos_sum, stats.hidden_cos_sum)
