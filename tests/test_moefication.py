"""MoEfication (harness/moefication): a dense Llama becomes a Qwen2-MoE that stock transformers loads.

Checked against direct computations: with every expert selected and logit scale 0 the MoE equals the
dense model; clusters are balanced and recover planted groups; the router recovers a planted
ranking; the build is deterministic, cached by fingerprint and rebuilt when the recipe changes.
"""
from __future__ import annotations

import json

import pytest
import torch

from harness.errors import HarnessError
from harness.moefication.build import MANIFEST, Recipe, build, plan_layer
from harness.moefication.clustering import balanced_kmeans, split_neurons
from harness.moefication.convert import LayerPlan, convert
from harness.moefication.refit import refit_down, ridge, routed_features
from harness.moefication.router import fit_router, routed_weights
from tests.tiny import SHARED, build_tiny_model, build_tiny_tokenizer, require_shared

C4_TRAIN = SHARED / "data" / "c4" / "c4-train.00000-of-01024.first1041.jsonl"


def _random_plans(dense, num_experts: int, shared: int, seed: int = 0) -> list[LayerPlan]:
    gen = torch.Generator().manual_seed(seed)
    size = dense.config.intermediate_size
    plans = []
    for _ in dense.model.layers:
        perm = torch.randperm(size, generator=gen)
        rest = perm[shared:]
        experts = [torch.sort(c).values for c in rest.chunk(num_experts)]
        router = torch.randn(num_experts, dense.config.hidden_size, generator=gen)
        plans.append(LayerPlan(torch.sort(perm[:shared]).values, experts, router, scale=0.0))
    return plans


@pytest.mark.parametrize("shared", [0, 16])  # expert widths 12, 8: grouped_mm needs 16-byte strides
def test_all_experts_at_scale_zero_equal_the_dense_model(tmp_path, shared):
    from transformers import AutoModelForCausalLM

    dense = build_tiny_model(tmp_path / "dense", arch="llama", seed=1)
    moe = convert(dense, _random_plans(dense, 4, shared), top_k=4)
    moe.save_pretrained(tmp_path / "moe")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32).eval()
    assert reloaded.config.model_type == "qwen2_moe" and reloaded.config.norm_topk_prob is False
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = dense(ids).logits
        got = reloaded(ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()


def test_top_k_below_e_computes_the_selected_experts_sum(tmp_path):
    """Top-2 of 4 at a real logit scale: the MoE MLP equals a direct sum over the router's top-2."""
    dense = build_tiny_model(tmp_path / "dense", arch="llama", seed=2)
    plans = _random_plans(dense, 4, 16, seed=3)
    for p in plans:
        p.scale = 0.3
    moe = convert(dense, plans, top_k=2)
    x = torch.randn(5, 32)
    layer, plan = dense.model.layers[0].mlp, plans[0]
    g, u, d = layer.gate_proj.weight, layer.up_proj.weight, layer.down_proj.weight
    act = torch.nn.functional.silu(x @ g.T) * (x @ u.T)
    probs = torch.softmax(x @ (plan.router * plan.scale).T, -1)
    top = torch.topk(probs, 2, -1)
    want = act[:, plan.shared] @ d[:, plan.shared].T
    for t in range(5):
        for w, e in zip(top.values[t], top.indices[t]):
            ids = plan.experts[e]
            want[t] += 4 * w * (act[t, ids] @ d[:, ids].T)
    with torch.no_grad():
        got = moe.model.layers[0].mlp(x[None])[0]
    assert torch.allclose(got, want, atol=1e-5)


def test_block_output_is_linear_in_the_stored_down_projections(tmp_path):
    """refit.py's premise: transformers' block output = routed_features @ stored_down^T, for any down."""
    dense = build_tiny_model(tmp_path / "dense", arch="llama", seed=2)
    plans = _random_plans(dense, 4, 16, seed=4)
    gen = torch.Generator().manual_seed(5)
    for p in plans:
        p.scale = 0.7
        p.down = torch.randn(32, dense.config.intermediate_size, generator=gen)
    moe = convert(dense, plans, top_k=2)
    x = torch.randn(7, 32, generator=gen)
    layer, plan = dense.model.layers[0].mlp, plans[0]
    act = torch.nn.functional.silu(x @ layer.gate_proj.weight.T) * (x @ layer.up_proj.weight.T)
    idx, w = routed_weights(x @ (plan.router * plan.scale).T, 2)
    want = routed_features(act, plan.shared, plan.experts, idx, w) @ plan.down.T
    with torch.no_grad():
        got = moe.model.layers[0].mlp(x[None])[0]
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_ridge_recovers_an_exact_linear_map_and_falls_back_to_the_initial_weights():
    gen = torch.Generator().manual_seed(0)
    feats, truth = torch.randn(400, 12, generator=gen), torch.randn(5, 12, generator=gen)
    initial = torch.zeros(5, 12)
    assert torch.allclose(ridge(feats, feats @ truth.T, initial, 1e-9), truth, atol=1e-5)
    # a huge strength returns the initial weights; noise-free data picks the weakest strength
    assert torch.allclose(ridge(feats, feats @ truth.T, truth + 1, 1e9), truth + 1, atol=1e-5)
    rows = torch.arange(400)
    down, lam, err = refit_down(feats, feats @ truth.T, initial, rows[:300], rows[300:], (1e-6, 1e-1, 10.0))
    assert lam == 1e-6 and err < 1e-8
    # a target the features cannot explain on held-out rows: the initial weights are kept (lam = inf)
    noise = torch.randn(400, 5, generator=gen)
    down, lam, _ = refit_down(feats, noise, initial, rows[:30], rows[300:], (1e-6,))
    assert lam == float("inf") and torch.equal(down, initial)


def test_refit_lowers_the_held_out_error_of_a_layer(tmp_path):
    """plan_layer's refit: the MoE block is closer to the dense MLP on held-out tokens than the constant compensation."""
    from harness.moefication.convert import dense_mlp, moe_config

    dense = build_tiny_model(tmp_path / "dense", arch="llama", seed=0, intermediate_size=40, hidden_size=32)
    x = torch.randn(6000, 32, generator=torch.Generator().manual_seed(1))
    config = moe_config(dense.config, 4, 2, 8, 8)
    base = dict(num_experts=4, top_k=2, shared=8, router_steps=50, cluster_tokens=256)
    plain, _ = plan_layer(x, *dense_mlp(dense.model.layers[0]), Recipe(**base, refit_grid=()), 0, config)
    fitted, _ = plan_layer(x, *dense_mlp(dense.model.layers[0]), Recipe(**base), 0, config)
    assert plain.down is None and fitted.down is not None
    assert fitted.stats["mlp_rel_err_before_refit"] == pytest.approx(plain.stats["mlp_rel_err"], abs=1e-4)
    assert fitted.stats["mlp_rel_err"] < plain.stats["mlp_rel_err"]


def test_balanced_kmeans_recovers_planted_groups_with_equal_sizes():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=gen) * 3
    truth = torch.arange(40) % 4
    feats = centers[truth] + 0.3 * torch.randn(40, 16, generator=gen)
    labels = balanced_kmeans(feats, 4, seed=0)
    assert torch.bincount(labels).tolist() == [10] * 4
    for j in range(4):  # each found cluster is one planted group
        assert len(set(truth[labels == j].tolist())) == 1
    assert torch.equal(labels, balanced_kmeans(feats, 4, seed=0))
    with pytest.raises(HarnessError, match="equal experts"):
        balanced_kmeans(feats, 3)


def test_split_neurons_shares_the_highest_mass_neurons():
    mass = torch.rand(50, 12, generator=torch.Generator().manual_seed(0))
    mass[:, [3, 7]] += 5
    shared, experts = split_neurons(mass, 5, 2)
    assert shared.tolist() == [3, 7]
    assert sorted(torch.cat(experts).tolist()) == [i for i in range(12) if i not in (3, 7)]
    assert all(len(e) == 2 for e in experts)


def test_router_recovers_a_planted_linear_ranking():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, generator=gen)
    truth = torch.randn(4, 8, generator=gen)
    mass = torch.softmax(2 * x @ truth.T, 1)
    weight = fit_router(x, mass, steps=300, lr=5e-2)
    agree = ((x @ weight.T).argmax(1) == mass.argmax(1)).float().mean()
    assert agree > 0.95


def _tiny_source(tmp_path):
    folder = tmp_path / "dense"
    build_tiny_model(folder, arch="llama", seed=0, intermediate_size=40, hidden_size=32)
    build_tiny_tokenizer(folder)
    return folder


def test_build_is_deterministic_cached_and_rebuilt_on_recipe_change(tmp_path):
    require_shared(C4_TRAIN)
    from transformers import AutoModelForCausalLM

    source = _tiny_source(tmp_path)
    recipe = Recipe(num_experts=4, top_k=2, shared=8, calib_data=str(C4_TRAIN), num_samples=8, seq_len=32,
                    router_steps=20, cluster_tokens=64)
    cache = tmp_path / "cache"
    first = build(source, recipe, cache_dir=cache, log=lambda _m: None)
    manifest = json.loads((first / MANIFEST).read_text())
    assert manifest["recipe"]["top_k"] == 2 and len(manifest["layers"]) == 2
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    logs = []
    assert build(source, recipe, cache_dir=cache, log=logs.append) == first
    assert logs and logs[0].startswith("reusing") and (first / "model.safetensors").stat().st_mtime_ns == stamp
    other = build(source, Recipe(**{**recipe.__dict__, "seed": 1}), cache_dir=cache, log=lambda _m: None)
    assert other != first
    again = build(source, recipe, out=tmp_path / "again", log=lambda _m: None, force=True)
    a = AutoModelForCausalLM.from_pretrained(first).state_dict()
    b = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from harness.compress.adapters import resolve

    resolved = resolve(AutoModelForCausalLM.from_pretrained(first))
    assert resolved.num_experts == 4 and resolved.top_k == 2


def test_bad_recipes_are_one_line_errors(tmp_path):
    require_shared(C4_TRAIN)
    source = _tiny_source(tmp_path)
    with pytest.raises(HarnessError, match="--experts 3 must divide"):
        build(source, Recipe(num_experts=3, shared=8, calib_data=str(C4_TRAIN)), out=tmp_path / "x")
    with pytest.raises(HarnessError, match="--calib_data"):
        build(source, Recipe(calib_data=str(tmp_path / "none.jsonl")), out=tmp_path / "x")
    with pytest.raises(HarnessError, match="no config.json"):
        build(tmp_path / "nowhere", Recipe(calib_data=str(C4_TRAIN)), out=tmp_path / "x")
