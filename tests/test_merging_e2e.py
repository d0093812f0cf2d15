"""m_smoe and hc_smoe on the shared calibration pass, on every family of the adapter table."""
from __future__ import annotations

import copy
import json

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


# ----------------------------------------------------------------------------------------------
# compress.py: the spelling --method msmoe, and bad input before anything is written


def test_compress_runs_msmoe_and_hc_smoe(tmp_path, tiny_mixtral_path):
    from harness.compress import load_plan
    from tests.test_methods_oneshot import run_compress

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"sort: {i % 7} {i % 5} {i % 3} = x"}) + "\n" for i in range(20)))
    common = ["--calib_data", str(corpus), "--calib_samples", "4", "--calib_seq_len", "16", "--calib_dir", str(tmp_path / "c")]
    rc, work = run_compress(tmp_path, tiny_mixtral_path, "msmoe", "--method", "msmoe", "--budget", "3", *common)
    assert rc == 0
    plan = load_plan(work / "plan.safetensors")
    assert plan.metadata["method"] == "msmoe" and plan.metadata["routing"] == "after_top_k"
    assert all(len(lp.groups()) == 3 and lp.expert_to_slot is not None for lp in plan.layers.values())
    rc, work = run_compress(tmp_path, tiny_mixtral_path, "hc", "--method", "hc_smoe", "--budget", "1", *common)
    assert rc == 0
    plan = load_plan(work / "plan.safetensors")
    assert all(lp.top_k == 1 and lp.groups() == [list(range(8))] for lp in plan.layers.values())


@pytest.mark.parametrize("extra, cfg, message", [
    (["--method", "msmoe", "--budget", "9"], None, "--budget 9 must be an int between 1 and the model's 8 experts"),
    (["--method", "hc_smoe", "--budget", "2"], "method = dict(type='hc_smoe', linkage='median')", "linkage 'median' is unknown"),
    (["--method", "m_smoe", "--budget", "2"], "method = dict(type='m_smoe', similarity='jaccard')", "similarity 'jaccard' is unknown"),
])
def test_compress_bad_merging_input_is_one_line_before_anything_is_written(tmp_path, tiny_mixtral_path, capsys,
                                                                           extra, cfg, message):
    from tests.test_methods_oneshot import run_compress

    if cfg is not None:
        (tmp_path / "cfg.py").write_text(cfg + "\n")
        extra = [*extra, "--method_cfg", str(tmp_path / "cfg.py")]
    rc, work = run_compress(tmp_path, tiny_mixtral_path, "bad", *extra)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and not work.exists()
    assert len([line for line in err.splitlines() if "rror" in line]) == 1


def test_compress_budget_below_one_is_refused_by_the_argument_parser(tmp_path, tiny_mixtral_path, capsys):
    from tests.test_methods_oneshot import run_compress

    with pytest.raises(SystemExit) as info:
        run_compress(tmp_path, tiny_mixtral_path, "bad", "--method", "hc_smoe", "--budget", "0")
    assert info.value.code == 2 and "argument --budget: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_method_cfg_of_an_alias_is_accepted_and_another_method_refused():
    """``type='m_smoe'`` settings serve ``--method msmoe`` (one registered class); a file for another
    method is still refused with the file named."""
    import pytest as _pytest

    from harness.errors import HarnessError
    from harness.tasks.compress import method_settings

    settings = method_settings("msmoe", "method_cfgs/m_smoe_align.py")
    assert settings["align"] is True
    with _pytest.raises(HarnessError, match="hc_smoe.py is for method 'hc_smoe', not --method msmoe"):
        method_settings("msmoe", "method_cfgs/hc_smoe.py")
