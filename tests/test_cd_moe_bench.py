"""bench/bench_cd_moe.py on a small model: its reference side (a full forward per candidate) and the
harness's cached-input search choose the same experts and layers. No timing is asserted."""
import argparse

import torch

from bench import bench_cd_moe
from harness.methods import cd_moe


def test_reference_and_cached_searches_choose_alike():
    args = argparse.Namespace(layers=3, experts=12, top_k=2, hidden=32, expert_width=16)
    model = bench_cd_moe.build_model(args, torch.device("cpu"), torch.float32)
    docs, _ = bench_cd_moe.documents(6, 20)
    batches = cd_moe.make_batches(docs, 3, 4, "cpu")
    orders, layers, calib, _ = bench_cd_moe.fast_search(model, batches, 3, 2)
    ref_orders, ref_layers, forwards, _ = bench_cd_moe.reference_search(model, batches, calib.weights, 3, 2)
    assert orders == ref_orders and layers == ref_layers
    assert forwards == 1 + 3 * (12 + 11 + 10) + 3 + 2
    assert all(len(set(o)) == 3 for o in orders.values()) and len(set(layers)) == 2


def test_the_report_states_the_checks(capsys):
    text = bench_cd_moe.main(["--layers", "2", "--experts", "8", "--k", "1", "--n", "1", "--docs", "4", "--seq_len", "16"])
    assert "- same expert order in every layer: True" in text and "- same layer order: True" in text
    assert "speed-up, reference / ours" in text
