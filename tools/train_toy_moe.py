"""Train the toy MoE (a small Mixtral) on the synthetic tasks and measure how expert pruning hurts it.

The toy model lets a user without a GPU run the whole job (full model, pruned plan, random pruning)
in a minute, and gives the search runners a test bed whose experts matter. Training is seeded and
runs on CPU with a fixed thread count, so the same command rebuilds the same weights.

Usage::

    python tools/make_toy_data.py --out data/toy --seed 0
    python tools/train_toy_moe.py --out models/toy-moe --steps 1200 --seed 0
    python tools/train_toy_moe.py --out models/toy-moe --report-only   # re-measure a checkpoint
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.errors import HarnessError  # noqa: E402
from harness.io import atomic_write_text  # noqa: E402
from harness.toy_tasks import ALPHABET, MAX_OUT_LEN, TASKS, generate, generate_splits, training_text  # noqa: E402

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, as in tests/tiny.py
DATA_SEED = 0  # the seed of the committed splits (tools/make_toy_data.py default)
TRAIN_STREAM_SEED = 1_000_003  # training examples come from a stream disjoint from data/toy's seeds
MODEL_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2)
KEEP_EXPERTS = 4
PRUNE_SEEDS = (0, 1, 2, 3, 4)


# ----------------------------------------------------------------------------------------- setup
def set_determinism(seed: int, threads: int) -> None:
    """Seed everything and fix the thread count: CPU kernels are reproducible at a fixed count."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def build_tokenizer():
    """A character-level tokenizer over the task alphabet whose task words are single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(TASKS) + ALPHABET)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Task words stay whole; every other character is its own token (spaces and newlines included).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[a-z]+|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        padding_side="left", clean_up_tokenization_spaces=False,
    )


def build_model(vocab_size: int, shape: dict = MODEL_SHAPE, aux_loss_coef: float = 0.02):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=vocab_size, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        tie_word_embeddings=False, router_aux_loss_coef=aux_loss_coef, output_router_logits=False,
        rope_theta=10000.0, **shape,
    )
    return MixtralForCausalLM(config)


# -------------------------------------------------------------------------------------- training
def encode_pair(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of ``<s> prompt`` and of `` answer\\n</s>`` (the part the loss is taken on)."""
    context, continuation = training_text(prompt, answer)
    ctx = [tokenizer.bos_token_id] + tokenizer.encode(context, add_special_tokens=False)
    cont = tokenizer.encode(continuation, add_special_tokens=False) + [tokenizer.eos_token_id]
    return ctx, cont


def make_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels that score only the continuation."""
    width = max(len(c) + len(a) for c, a in pairs)
    ids, mask, labels = [], [], []
    for ctx, cont in pairs:
        seq = ctx + cont
        pad = width - len(seq)
        ids.append(seq + [pad_id] * pad)
        mask.append([1] * len(seq) + [0] * pad)
        labels.append([-100] * len(ctx) + cont + [-100] * pad)
    return {k: torch.tensor(v) for k, v in (("input_ids", ids), ("attention_mask", mask), ("labels", labels))}


def training_stream(seed: int, batch_size: int, steps: int):
    """Yield ``steps`` batches of (prompt, answer), tasks mixed evenly, never a dev/eval prompt."""
    held_out = {task: {e.prompt for split in ("eval", "dev") for e in splits[split]}
                for task, splits in generate_splits(DATA_SEED, {"eval": 200, "dev": 100, "train": 0}).items()}
    rng = random.Random(TRAIN_STREAM_SEED + seed)
    for _ in range(steps):
        batch = []
        for i in range(batch_size):
            task = TASKS[i % len(TASKS)]
            (example,) = generate(task, 1, rng, held_out[task])
            batch.append((example.prompt, example.answer))
        yield batch


def train(model, tokenizer, steps: int, seed: int, batch_size: int = 64, lr: float = 2e-3,
          log_every: int = 100) -> None:
    """AdamW with linear warm-up and cosine decay; loss = answer cross-entropy + router aux loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    start = time.time()
    for step, batch in enumerate(training_stream(seed, batch_size, steps), start=1):
        inputs = make_batch([encode_pair(tokenizer, p, a) for p, a in batch], tokenizer.pad_token_id)
        out = model(**inputs, output_router_logits=True)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if log_every and (step % log_every == 0 or step == steps):
            print(f"step {step}/{steps} loss {out.loss.item():.4f} aux {out.aux_loss.item():.4f} "
                  f"{time.time() - start:.0f}s", flush=True)
    model.eval()


# ------------------------------------------------------------------------------------ evaluation
def read_split(data_dir: Path, task: str, split: str) -> list[dict]:
    path = data_dir / task / f"{split}.jsonl"
    if not path.is_file():
        raise HarnessError(f"{path} is missing; run `python tools/make_toy_data.py --out {data_dir}` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], batch_size: int = 100) -> list[str]:
    """Greedy continuations of ``prompts``, cut at the first newline and stripped."""
    newline = tokenizer.convert_tokens_to_ids("\n")
    answers = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True)
        out = model.generate(**enc, do_sample=False, max_new_tokens=MAX_OUT_LEN,
                             eos_token_id=[tokenizer.eos_token_id, newline], pad_token_id=tokenizer.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip())
    return answers


def exact_match(model, tokenizer, rows: list[dict]) -> float:
    """Percentage of rows whose greedy answer equals ``answer``."""
    predictions = greedy_answers(model, tokenizer, [r["prompt"] for r in rows])
    return 100.0 * sum(p == r["answer"] for p, r in zip(predictions, rows)) / len(rows)


# --------------------------------------------------------------------------------------- pruning
def moe_blocks(model) -> list:
    return [layer.mlp for layer in model.model.layers]


def prune_experts(model, keep: list[list[int]]):
    """Keep only the experts ``keep[layer]`` of each layer, slicing router rows and expert tensors."""
    for block, kept in zip(moe_blocks(model), keep):
        index = torch.tensor(sorted(kept))
        block.gate.weight = torch.nn.Parameter(block.gate.weight.data[index].clone())
        block.experts.gate_up_proj = torch.nn.Parameter(block.experts.gate_up_proj.data[index].clone())
        block.experts.down_proj = torch.nn.Parameter(block.experts.down_proj.data[index].clone())
        block.gate.num_experts = block.experts.num_experts = len(index)
    model.config.num_local_experts = len(keep[0])
    return model


@torch.no_grad()
def routing_counts(model, tokenizer, rows: list[dict]) -> torch.Tensor:
    """(layers, experts) counts of top-k selections over the prompt tokens of ``rows``: the definition
    of ``prune_baseline.py --method frequency`` (routing on what the model is given, not the answer)."""
    pairs = [encode_pair(tokenizer, r["prompt"], r["answer"]) for r in rows]
    batch = make_batch(pairs, tokenizer.pad_token_id)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_router_logits=True)
    prompt = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    for row, (ctx, _) in enumerate(pairs):
        prompt[row, : len(ctx)] = True
    real = prompt.reshape(-1)
    top_k = model.config.num_experts_per_tok
    counts = []
    for logits in out.router_logits:
        chosen = logits[real].topk(top_k, dim=-1).indices.reshape(-1)
        counts.append(torch.bincount(chosen, minlength=logits.shape[-1]))
    return torch.stack(counts)


def ranked_experts(counts: torch.Tensor) -> list[list[int]]:
    """Each layer's experts from most to least selected (ties broken by the lower index)."""
    return [sorted(range(len(row)), key=lambda e: (-int(row[e]), e)) for row in counts]


def random_keep(num_layers: int, num_experts: int, k: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [sorted(rng.sample(range(num_experts), k)) for _ in range(num_layers)]


def pruning_table(model_dir: Path, data_dir: Path, keep: int = KEEP_EXPERTS, seeds=PRUNE_SEEDS) -> list[dict]:
    """Per task: full-model exact match, random ``keep``-of-E (mean, std over seeds), most-routed, least-routed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def load():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    full = load()
    layers, experts = full.config.num_hidden_layers, full.config.num_local_experts
    random_models = [prune_experts(load(), random_keep(layers, experts, keep, s)) for s in seeds]
    table = []
    for task in TASKS:
        rows = read_split(data_dir, task, "eval")
        counts = routing_counts(full, tokenizer, read_split(data_dir, task, "dev"))
        ranked = ranked_experts(counts)
        rand = [exact_match(m, tokenizer, rows) for m in random_models]
        table.append({
            "task": task,
            "full": exact_match(full, tokenizer, rows),
            "random_mean": statistics.mean(rand),
            "random_std": statistics.stdev(rand),  # sample std, as summarize.py prints
            "random_min": min(rand),
            "most_routed": exact_match(prune_experts(load(), [sorted(r[:keep]) for r in ranked]), tokenizer, rows),
            "least_routed": exact_match(prune_experts(load(), [sorted(r[-keep:]) for r in ranked]), tokenizer, rows),
        })
    return table


def format_table(table: list[dict], keep: int, seeds) -> str:
    header = (f"| task | full model | random {keep} of 8 (mean ± sample std over seeds {list(seeds)}) | worst random seed "
              f"| {keep} most-routed per layer | {keep} least-routed per layer |\n|---|---|---|---|---|---|\n")
    return header + "".join(
        f"| {r['task']} | {r['full']:.1f} | {r['random_mean']:.1f} ± {r['random_std']:.1f} | {r['random_min']:.1f} "
        f"| {r['most_routed']:.1f} | {r['least_routed']:.1f} |\n" for r in table)


# ----------------------------------------------------------------------------------------- CLI
def save_checkpoint(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


README_TEMPLATE = """\
# toy-moe: a small Mixtral trained on synthetic skills

A {params}-parameter `MixtralForCausalLM` (hidden 128, 4 layers, 8 experts per layer, top-2
routing, float32) trained on four synthetic exact-match tasks (`harness/toy_tasks.py`):

| task | prompt | answer |
|---|---|---|
| copy | `copy: 6 0 9 =` | `6 0 9` |
| reverse | `reverse: 6 2 9 =` | `9 2 6` |
| sort | `sort: 5 2 9 1 =` | `1 2 5 9` |
| count | `count 4: 4 1 4 9 =` | `2` (occurrences of the named digit; chance 20%) |

The model was trained on `<s>` + prompt + ` ` + answer + `\\n</s>`, with the loss on the part after
the prompt. Generate greedily from the prompt, stop at `\\n` (or `</s>`), strip, and compare
exactly; at most {max_out_len} new tokens are needed. The tokenizer is character-level (every digit,
space, `:`, `=`, newline is one token; the task words are single tokens) and loads offline with
`AutoTokenizer.from_pretrained`.

## Rebuild

Run from the repository root (CPU, {threads} threads; the weights depend on the thread count):

```
python tools/make_toy_data.py --out data/toy --seed 0
python tools/train_toy_moe.py --out models/toy-moe --steps {steps} --seed {seed} --threads {threads}
```

The second command trains on examples drawn on the fly from the same generator (a different seed,
never a dev/eval prompt), saves the checkpoint here and rewrites this file with the table below.
`python tools/train_toy_moe.py --out models/toy-moe --report-only` re-measures the table only.

## Exact match on the eval split (200 items per task), full and pruned

Pruning keeps 4 of the 8 experts in every layer (router rows and expert weights sliced).
"Most-routed" / "least-routed" rank each layer's experts by how often the full model selects them
(top-2) on the prompt tokens of that task's dev split (the definition of
`harness/tasks/prune_baseline.py --method frequency`).

{table}"""


def checkpoint_parameters(out: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def write_readme(out: Path, table_md: str, args: argparse.Namespace) -> None:
    values = {"steps": args.steps, "seed": args.seed, "threads": args.threads, "table": table_md,
              "params": f"{checkpoint_parameters(out) / 1e6:.2f}M", "max_out_len": MAX_OUT_LEN}
    text = README_TEMPLATE
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    atomic_write_text(out / "README.md", text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="models/toy-moe", help="checkpoint folder to write (or read)")
    parser.add_argument("--data", default="data/toy", help="folder of tools/make_toy_data.py's splits")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2, help="fixed CPU threads (results depend on it)")
    parser.add_argument("--report-only", action="store_true", help="skip training; measure the checkpoint")
    parser.add_argument("--no-readme", action="store_true", help="print the table but do not write README.md")
    args = parser.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    set_determinism(args.seed, args.threads)
    if not args.report_only:
        for task in TASKS:
            read_split(data, task, "eval")  # fail early if the data is missing
        tokenizer = build_tokenizer()
        model = build_model(len(tokenizer))
        print(f"parameters: {sum(p.numel() for p in model.parameters()):,}", flush=True)
        train(model, tokenizer, args.steps, args.seed, args.batch_size, args.lr)
        save_checkpoint(model, tokenizer, out)
    table = pruning_table(out, data)
    table_md = format_table(table, KEEP_EXPERTS, PRUNE_SEEDS)
    print(table_md)
    if not args.no_readme:
        write_readme(out, table_md, args)


if __name__ == "__main__":
    main()
