"""m_smoe and hc_smoe on the shared calibration pass, on every family of the adapter table."""
from __future__ import annotations

import copy

import pytest
import torch

from harness.compress import apply_plan
from harness.methods.base import MethodInputs, ModelShape, build_plan
from harness.methods.calibration import calibrate
from tests.test_apply import ARCHS, IDS, build_model, moe_layers

SAMPLES = [[5, 17, 42, 99, 7, 250, 30, 64], [128, 11, 9, 40, 77], [120, 31, 200, 201, 202, 203, 8]]


@pytest.fixture(scope="module", params=ARCHS)
def calibrated(request):
    model = build_model(request.param)
    return model, calibrate(model, SAMPLES, source="test tokens")


@pytest.mark.parametrize("name, settings", [("m_smoe", {}), ("hc_smoe", {"align": True})])
def test_merging_methods_run_on_calibration_statistics(calibrated, name, settings):
    model, stats = calibrated
    inputs = MethodInputs(ModelShape.of(model), 3, stats=stats, model=model)
    plan = build_plan(name, inputs, **settings)
    merged = apply_plan(copy.deepcopy(model), plan)
    for index in moe_layers(model):
        lp = plan.layers[index]
        assert merged.model.layers[index].mlp.experts.num_experts == 3 == len(lp.groups())
        assert torch.allclose(lp.merge.sum(dim=1), torch.ones(3))
        # frequency weights are the calibration's own top-k counts
        counts = stats.counts[index].double()
        for slot, members in enumerate(lp.groups()):
            if counts[members].sum() > 0:
                want = counts[members] / counts[members].sum()
                assert torch.allclose(lp.merge[slot, members].double(), want, atol=1e-6)
    with torch.no_grad():
        assert torch.isfinite(merged(IDS).logits).all()
    assert (plan.layers[moe_layers(model)[0]].permutations is not None) == bool(settings.get("align"))
    # shared experts are untouched
    for attr in ("shared_expert", "shared_experts"):
        block = model.model.layers[moe_layers(model)[0]].mlp
        if hasattr(block, attr):
            after = getattr(merged.model.layers[moe_layers(model)[0]].mlp, attr)
            assert all(torch.equal(a, b) for a, b in zip(getattr(block, attr).state_dict().values(), after.state_dict().values()))
