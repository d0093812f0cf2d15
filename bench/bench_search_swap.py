"""Search cost: swapping a candidate plan in vs evaluating it once.

A plan search tries hundreds of candidates on one loaded model. Each try is a swap (``reset_plan``
to the uncompressed experts, then ``apply_plan`` of the candidate; ``PlanEvaluator.use``) and one
evaluation pass of a small task. The swap should cost a small fraction of the evaluation; this
script measures both for an expert-pruning plan and an expert-merging plan and prints the ratio.

Models: on CPU the toy MoE (``models/toy-moe``) when it is there, else a random small Mixtral; on a
GPU real-shape MoEs with random weights (OLMoE-1B-7B and Qwen1.5-MoE-A2.7B shapes, bf16,
``grouped_mm`` experts). Tasks: on CPU the toy sort task (multiple choice over ``data/toy``), on
GPU BoolQ (real data, log-likelihood of ' yes' / ' no') with the SmolLM2 tokenizer.

    python bench/bench_search_swap.py [--num_items 100] [--batch_size 16] [--out bench/swap.md]
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import torch

try:
    from bench import common
except ImportError:  # run as a script
    import common

from harness.compress.adapters import adapter_for, expert_count, moe_layer_indices  # noqa: E402
from harness.compress.plan import CompressionPlan, LayerPlan  # noqa: E402
from harness.models.hf_causal_lm import HFCausalLM  # noqa: E402
from harness.pipeline import EvalTask  # noqa: E402
from harness.search.fitness import PlanEvaluator  # noqa: E402

TOY_MOE = common.REPO / "models" / "toy-moe"
TOY_DATA = common.REPO / "data" / "toy"
TOY_ALPHABET = sorted(set("0123456789 :=\n")) + list("abcdefghijklmnopqrstuvwxyz")

@dataclass
class Subject:
    """A loaded MoE behind ``HFCausalLM`` and the task it is evaluated on."""

    name: str
    lm: HFCausalLM
    task: EvalTask


# ----------------------------------------------------------------------------------- models
def char_tokenizer():
    """A character-level tokenizer over the toy tasks' alphabet (for the random CPU Mixtral)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + TOY_ALPHABET)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def random_mixtral(vocab_size: int, seed: int = 0, **shape):
    """A small random Mixtral (the toy MoE's shape unless ``shape`` says otherwise)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dims = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=512)
    dims.update(shape)
    config = AutoConfig.for_model("mixtral", vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                                  **dims)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


# ----------------------------------------------------------------------------------- tasks
def toy_task(num_items: int, skill: str = "sort") -> EvalTask:
    """Multiple choice over the toy task's near-miss choices (the answer follows ' = ')."""
    cfg = dict(
        abbr=f"toy_{skill}_choice",
        reader_cfg=dict(type="jsonl", path=str(TOY_DATA / skill / "dev.jsonl"), input_columns=["prompt", "choices"],
                        output_column="label"),
        infer_cfg=dict(prompt_template=dict(template="{prompt} "), retriever=dict(type="ZeroRetriever"),
                       inferencer=dict(type="PPLInferencer", mode="loglikelihood", continuations="choices")),
        eval_cfg=dict(evaluator=dict(type="AccEvaluator")),
    )
    return EvalTask(cfg, max_num=num_items)


def boolq_task(num_items: int) -> EvalTask:
    cfg = dict(
        abbr="boolq_ll",
        reader_cfg=dict(type="jsonl", path=str(common.SHARED_DATA / "boolq" / "val.jsonl"),
                        input_columns=["question", "passage"], output_column="label",
                        label_map={"true": "A", "false": "B"}),
        infer_cfg=dict(prompt_template=dict(template="{passage}\nQuestion: {question}?\nAnswer:"),
                       retriever=dict(type="ZeroRetriever"),
                       inferencer=dict(type="PPLInferencer", mode="loglikelihood",
                                       continuations={"A": " yes", "B": " no"})),
        eval_cfg=dict(evaluator=dict(type="AccEvaluator")),
    )
    return EvalTask(cfg, max_num=num_items)


def cpu_subjects(num_items: int, batch_size: int) -> list[Subject]:
    if (TOY_MOE / "config.json").is_file():
        lm = HFCausalLM(str(TOY_MOE), batch_size=batch_size, max_seq_len=256)
        name = "toy-moe (trained, models/toy-moe)"
    else:
        tokenizer = char_tokenizer()
        model = random_mixtral(len(tokenizer))
        lm = HFCausalLM("random-mixtral", model=model, tokenizer=tokenizer, batch_size=batch_size, max_seq_len=256)
        name = "random small Mixtral (toy-moe shape; models/toy-moe absent)"
    return [Subject(name, lm, toy_task(num_items))]


def gpu_subjects(names: list[str], num_items: int, batch_size: int, device, dtype) -> list[Subject]:
    _, tokenizer = common.load_smollm2(torch.device("cpu"), torch.float32)  # only its tokenizer is used
    task = boolq_task(num_items)
    subjects = []
    for name in names:
        model = common.real_shape_moe(name, device, dtype)
        lm = HFCausalLM(name, model=model, tokenizer=tokenizer, batch_size=batch_size, max_seq_len=2048,
                        add_special_tokens=False)
        subjects.append(Subject(f"{name} shape, random weights", lm, task))
    return subjects


# ----------------------------------------------------------------------------------- plans
def pruning_plan(model, keep: int, seed: int = 0) -> CompressionPlan:
    """Keep ``keep`` random experts in every MoE layer (top-k lowered to fit when needed)."""
    rng = random.Random(seed)
    num_experts, layers = expert_count(model), moe_layer_indices(model)
    top_k = min(keep, int(getattr(model.config, adapter_for(model).top_k_key)))
    kept = {layer: rng.sample(range(num_experts), keep) for layer in layers}
    return CompressionPlan.from_kept(kept, num_experts, num_layers=model.config.num_hidden_layers, top_k=top_k)


def merging_plan(model, keep: int, seed: int = 0) -> CompressionPlan:
    """Merge the experts into ``keep`` slots per MoE layer with random convex weights; the router
    maps the original probabilities onto the slots with the same matrix (EEP's form)."""
    generator = torch.Generator().manual_seed(seed)
    num_experts, layers = expert_count(model), moe_layer_indices(model)
    top_k = min(keep, int(getattr(model.config, adapter_for(model).top_k_key)))
    plan_layers = {}
    for layer in layers:
        weights = torch.rand(keep, num_experts, generator=generator)
        weights = weights / weights.sum(dim=1, keepdim=True)
        plan_layers[layer] = LayerPlan(merge=weights, router=weights.clone(), top_k=top_k)
    return CompressionPlan(num_layers=model.config.num_hidden_layers, num_experts=num_experts, layers=plan_layers)


# ----------------------------------------------------------------------------------- measuring
def measure_subject(subject: Subject, keep: int, repeats: int, device) -> list[list]:
    """Rows: per plan kind, median swap seconds, median evaluation seconds and their ratio."""
    evaluator = PlanEvaluator(subject.lm, snapshot_device="cpu" if device.type == "cuda" else None)
    model = subject.lm.model
    num_experts = expert_count(model)
    plans = {"none (reset only)": None, "pruning": pruning_plan(model, keep), "merging": merging_plan(model, keep)}
    subject.task.score(subject.lm)  # warm-up: prompts built and tokenised once, as in a search
    rows = []
    for kind, plan in plans.items():
        swap, _ = common.time_it(lambda plan=plan: evaluator.use(plan), repeats=repeats, warmup=1, device=device)
        evaluation, metrics = common.time_it(lambda: subject.task.score(subject.lm), repeats=repeats, warmup=0,
                                             device=device)
        rows.append([subject.name, kind, f"{keep if plan is not None else num_experts} of {num_experts}", len(subject.task.data.test_rows),
                     f"{swap.median * 1e3:.1f} ({min(swap.seconds) * 1e3:.1f}-{max(swap.seconds) * 1e3:.1f})", f"{evaluation.median:.2f}",
                     common.ratio(evaluation.median, swap.median), f"{next(iter(metrics.values())):.1f}"])
    evaluator.use(None)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser, num_items=100, batch_size=16)
    parser.add_argument("--keep", type=int, default=None, help="experts kept per layer (default: half)")
    parser.add_argument("--models", default="OLMoE-1B-7B,Qwen1.5-MoE-A2.7B",
                        help=f"GPU: real shapes to build, comma-separated from {list(common.REAL_SHAPES)}")
    args = parser.parse_args(argv)
    device, dtype = common.start_run(args)

    if device.type == "cuda":
        subjects = gpu_subjects([m for m in args.models.split(",") if m], args.num_items, args.batch_size, device, dtype)
    else:
        subjects = cpu_subjects(args.num_items, args.batch_size)
    rows = []
    for subject in subjects:
        keep = args.keep or max(1, expert_count(subject.lm.model) // 2)
        rows.extend(measure_subject(subject, keep, args.repeats, device))
        del subject.lm.model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    headers = ["model", "plan", "experts kept", "task items", "swap ms (min-max)", "eval pass s",
               "eval / swap", "metric"]
    title = "bench_search_swap: plan swap (reset_plan + apply_plan) vs one evaluation pass"
    extra = {"batch size": args.batch_size, "repeats": f"{args.repeats} (median)",
             "snapshot": "CPU copies (GPU) / references (CPU)"}
    common.emit([common.header(title, device, dtype, extra), common.table(rows, headers)], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
