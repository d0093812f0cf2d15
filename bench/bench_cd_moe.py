"""CD-MoE search cost: the cached-input fast path vs the reference's whole-model pass per candidate.

The reference (duterscmy/CD-MoE) scores every candidate of the greedy expert search (64 + 63 + ...
per layer) and of the greedy layer search with a full forward of the model with
``output_hidden_states``. ``harness.methods.cd_moe`` scores an expert candidate from one decoder
layer's cached inputs (each expert's output computed once per layer) and a layer candidate by
rerunning only the decoder layers from it on. This script runs both searches both ways on the same
model and calibration batches, checks that they choose the same experts and layers, and prints the
time ratio (issue 13's goal: at least 5x).

The "reference" side here is written in this script: the same greedy loops, each candidate installed
with ``apply_plan`` and scored from the full model's hidden states (the objective's code is the
harness's; ``tests/test_cd_moe.py`` checks that against a direct computation).

Model: a random Qwen2-MoE (gated shared expert) with 64 experts, top-4, 16 decoder layers, small
hidden size, its embeddings and experts scaled up so condensing a layer moves the hidden-state
softmax well above the divergence's eps. Calibration: the first ``--docs`` C4 train documents of
../shared as bytes (ids = byte + 4, ``--seq_len`` each); random ids when ../shared is absent.

    python bench/bench_cd_moe.py [--layers 16] [--experts 64] [--k 2] [--n 4] [--docs 16] [--seq_len 64] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

try:
    from bench import common
except ImportError:  # run as a script
    import common

from harness.compress import apply_plan, reset_plan, snapshot_experts  # noqa: E402
from harness.compress.adapters import resolve  # noqa: E402
from harness.methods import cd_moe  # noqa: E402

C4 = common.SHARED_DATA / "c4" / "c4-train.00000-of-01024.first1041.jsonl"
OFFSET = 4  # ids 0-3 are the special tokens; byte b is id b + 4


def build_model(args, device, dtype):
    """The random Qwen2-MoE of the module docstring, on ``device`` in ``dtype``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen2_moe", vocab_size=256 + OFFSET, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        moe_intermediate_size=args.expert_width, shared_expert_intermediate_size=2 * args.expert_width,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2, num_experts=args.experts,
        num_experts_per_tok=args.top_k, norm_topk_prob=False, decoder_sparse_step=1, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(10)
        for layer in model.model.layers:
            layer.mlp.experts.down_proj.mul_(30)
            layer.mlp.gate.weight.normal_(0.0, 0.6)
    return model.to(device=device, dtype=dtype)


def documents(count: int, length: int) -> tuple[list[list[int]], str]:
    """Byte ids of the first C4 documents (or random ids without ../shared) and where they came from."""
    if C4.is_file():
        docs = []
        with open(C4, encoding="utf-8") as handle:
            for line in handle:
                text = json.loads(line).get("text", "")
                if text:
                    docs.append([b + OFFSET for b in text.encode("utf-8")[:length]])
                if len(docs) == count:
                    break
        return docs, f"first {len(docs)} C4 train documents as bytes, {length} at most"
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(OFFSET, 256 + OFFSET, (length,), generator=generator).tolist() for _ in range(count)], \
        f"{count} random documents of {length} ids (../shared absent)"


# ----------------------------------------------------------------------------------- the reference
@torch.no_grad()
def full_hidden(model, batches) -> list[tuple]:
    return [model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False,
                  output_hidden_states=True).hidden_states for b in batches]


def plan_divergence(model, snapshot, batches, original_probs, plan, position: int) -> float:
    """Mean document divergence of ``hidden_states[position]``: one full forward with the plan installed."""
    apply_plan(model, plan)
    try:
        hidden = full_hidden(model, batches)
    finally:
        reset_plan(model, snapshot)
    total = sum(float(cd_moe.document_divergence(p[position], h[position], b.attention_mask).double().sum())
                for p, h, b in zip(original_probs, hidden, batches))
    return total / sum(b.attention_mask.shape[0] for b in batches)


def reference_search(model, batches, weights, k: int, n: int):
    """The reference's greedy loops: a full forward per expert candidate and per layer candidate.
    Returns the expert orders, the layer order, the number of full forwards and the seconds of the
    expert search (with the original forward) and of the layer search."""
    start = time.perf_counter()
    moe = resolve(model)
    snapshot = snapshot_experts(model)
    original_probs = [[torch.softmax(cd_moe.wide(h), dim=-1) for h in hs] for hs in full_hidden(model, batches)]
    forwards = 1
    orders = {}
    for index in moe.moe_layers:
        order = []
        while len(order) < k:
            best = None
            for e in range(moe.num_experts):
                if e in order:
                    continue
                plan = cd_moe.condensed_plan(model, {index: order + [e]}, weights)
                value = plan_divergence(model, snapshot, batches, original_probs, plan, index + 1)
                forwards += 1
                if best is None or value < best[0]:  # strict '<' over ascending ids: the lowest id wins a tie
                    best = (value, e)
            order.append(best[1])
        orders[index] = order
    common.synchronize()
    experts_done = time.perf_counter()
    layers = []
    for _ in range(n):
        best = None
        for index in moe.moe_layers:
            if index in layers:
                continue
            plan = cd_moe.condensed_plan(model, {i: orders[i] for i in layers + [index]}, weights)
            value = plan_divergence(model, snapshot, batches, original_probs, plan, -1)
            forwards += 1
            if best is None or value < best[0]:
                best = (value, index)
        layers.append(best[1])
    common.synchronize()
    return orders, layers, forwards, (experts_done - start, time.perf_counter() - experts_done)


# ----------------------------------------------------------------------------------- ours
def fast_search(model, batches, k: int, n: int, weights=None):
    """harness.methods.cd_moe: calibration pass, greedy expert orders on cached inputs, greedy layer
    search from cached block inputs. Returns the orders, the layer order, the calibration and the
    seconds of the calibration and of each search."""
    moe = resolve(model)
    start = time.perf_counter()
    calib = cd_moe.calibrate(model, batches)
    if weights is not None:
        calib.weights = weights
    common.synchronize()
    calibrated = time.perf_counter()
    orders = {i: cd_moe.search_experts(model, calib, i, k)[0] for i in moe.moe_layers}
    common.synchronize()
    searched = time.perf_counter()
    steps = cd_moe.search_layers(model, calib, orders, n)
    common.synchronize()
    done = time.perf_counter()
    return orders, steps[-1][0]["layers"], calib, (calibrated - start, searched - calibrated, done - searched)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16, help="decoder layers (all MoE)")
    parser.add_argument("--experts", type=int, default=64, help="routed experts per layer")
    parser.add_argument("--top_k", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64, help="hidden size")
    parser.add_argument("--expert_width", type=int, default=32, help="one expert's intermediate size")
    parser.add_argument("--k", type=int, default=2, help="experts per condensed layer (K)")
    parser.add_argument("--n", type=int, default=4, help="condensed layers (N)")
    parser.add_argument("--docs", type=int, default=16, help="calibration documents")
    parser.add_argument("--seq_len", type=int, default=64, help="tokens per document")
    parser.add_argument("--batch_size", type=int, default=8, help="documents per forward (both paths)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", help="float32 (default: the choices compared exactly) or bfloat16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    device, dtype = common.start_run(args)
    model = build_model(args, device, dtype)
    docs, source = documents(args.docs, args.seq_len)
    batches = cd_moe.make_batches(docs, 3, args.batch_size, device)

    with torch.no_grad():
        fast_search(model, batches[:1], 1, 1)  # warm-up, untimed
    orders, layers, calib, (calib_s, experts_s, layers_s) = fast_search(model, batches, args.k, args.n)
    fast_s = calib_s + experts_s + layers_s
    weights = calib.weights
    del calib
    ref_orders, ref_layers, forwards, (ref_experts_s, ref_layers_s) = reference_search(model, batches, weights,
                                                                                         args.k, args.n)
    ref_s = ref_experts_s + ref_layers_s

    same_experts = orders == ref_orders
    same_layers = layers == ref_layers
    speedup = common.ratio(ref_s, fast_s)
    moe = resolve(model)
    rows = [["greedy expert search, every layer (+ calibration pass)", round(experts_s + calib_s, 2),
             round(ref_experts_s, 2), round(common.ratio(ref_experts_s, experts_s + calib_s), 1)],
            ["greedy layer search", round(layers_s, 2), round(ref_layers_s, 2), round(common.ratio(ref_layers_s, layers_s), 1)],
            ["total", round(fast_s, 2), round(ref_s, 2), round(speedup, 1)]]
    differing = [i for i in moe.moe_layers if orders[i] != ref_orders[i]]
    text = "\n\n".join([
        common.header("bench_cd_moe", device, dtype, {
            "model": f"random Qwen2-MoE, {args.layers} layers, E={args.experts}, top-{args.top_k}, hidden {args.hidden}, "
                     f"expert width {args.expert_width}, gated shared expert",
            "search": f"K={args.k} experts per layer in every MoE layer, then N={args.n} layers, beam 1",
            "calibration": f"{source}, batch {args.batch_size}",
            "reference full forwards": forwards,
            "command": " ".join(["python bench/bench_cd_moe.py", *argv])}),
        common.table(rows, ["part", "ours s (cached inputs)", "reference s (full forward per candidate)", "ratio"]),
        "### Checks",
        "\n".join([
            f"- same expert order in every layer: {same_experts}" + (f" (differ: layers {differing})" if differing else ""),
            f"- same layer order: {same_layers} (ours {layers}, reference {ref_layers})",
            common.check_line("speed-up, reference / ours (calibration pass included in ours)", speedup, ">= 5x",
                              speedup >= 5)]),
    ])
    return common.emit([text], args.out)


if __name__ == "__main__":
    main()
