"""The committed toy MoE and its synthetic data: correct rows, a model well above chance on every
task, pruning that hurts, and a deterministic generator and trainer.

Accuracy and pruning are measured here with their own greedy loop and router mask, independent of
the code in tools/train_toy_moe.py (whose expert slicing is checked against that mask).
"""
from __future__ import annotations

import importlib.util
import json
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.toy_tasks import MAX_OUT_LEN, SPLIT_SIZES, TASKS

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "toy-moe"
DATA_DIR = REPO / "data" / "toy"
N_ITEMS = 50  # eval items per task in the accuracy tests
CHANCE = {"copy": 0.0, "reverse": 0.0, "sort": 0.0, "count": 20.0}


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(task: str, split: str = "eval") -> list[dict]:
    return [json.loads(line) for line in (DATA_DIR / task / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)


def _load_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model():
    return _load_model()


@pytest.fixture(scope="module")
def full_accuracy(model, tokenizer):
    return {task: _exact_match(model, tokenizer, _rows(task)[:N_ITEMS]) for task in TASKS}


# ------------------------------------------------------------------- independent reference code
def _reference_answer(prompt: str) -> str:
    """The answer computed straight from the prompt text."""
    match = re.fullmatch(r"(copy|reverse|sort|count (\d)): ((?:\d )*\d) =", prompt)
    assert match, prompt
    task, target, digits = match.group(1).split(" ")[0], match.group(2), match.group(3).split(" ")
    if task == "copy":
        return " ".join(digits)
    if task == "reverse":
        return " ".join(reversed(digits))
    if task == "sort":
        return " ".join(sorted(digits))
    return str(digits.count(target))


@torch.no_grad()
def _greedy(model, tokenizer, prompts: list[str]) -> list[str]:
    """Greedy decoding without a cache: prompts of equal length are batched, so no padding is needed."""
    newline = tokenizer.convert_tokens_to_ids("\n")
    by_length: dict[int, list[int]] = {}
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    answers = [""] * len(prompts)
    for indices in by_length.values():
        ids = torch.tensor([encoded[i] for i in indices])
        start = ids.shape[1]
        for _ in range(MAX_OUT_LEN):
            next_ids = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_ids], dim=1)
            if ((ids[:, start:] == newline) | (ids[:, start:] == tokenizer.eos_token_id)).any(1).all():
                break
        for row, i in zip(ids[:, start:], indices):
            text = tokenizer.decode(row, skip_special_tokens=False)
            answers[i] = text.split("\n")[0].split("</s>")[0].strip()
    return answers


def _exact_match(model, tokenizer, rows: list[dict]) -> float:
    predictions = _greedy(model, tokenizer, [r["prompt"] for r in rows])
    return 100.0 * sum(p == r["answer"] for p, r in zip(predictions, rows)) / len(rows)


def _mask_experts(model, keep: list[list[int]]) -> list:
    """Route only to ``keep[layer]``: a hook recomputes each router with the others' logits at -inf."""

    def hook_for(kept: list[int]):
        def hook(router, args, output):
            hidden = args[0].reshape(-1, router.weight.shape[1])
            logits = F.linear(hidden, router.weight)
            masked = torch.full_like(logits, float("-inf"))
            masked[:, kept] = logits[:, kept]
            probs = masked.float().softmax(-1)
            top_p, top_i = probs.topk(router.top_k, dim=-1)
            return masked, top_p / top_p.sum(-1, keepdim=True), top_i

        return hook

    return [layer.mlp.gate.register_forward_hook(hook_for(k)) for layer, k in zip(model.model.layers, keep)]


# ------------------------------------------------------------------------------------ the data
@pytest.mark.parametrize("task", TASKS)
def test_rows_are_right_and_choices_are_near_misses(task):
    for split, size in SPLIT_SIZES.items():
        rows = _rows(task, split)
        assert len(rows) == size
        for row in rows:
            assert set(row) == {"prompt", "answer", "choices", "label"}
            assert row["answer"] == _reference_answer(row["prompt"]), row
            assert row["choices"][row["label"]] == row["answer"]
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
            for wrong in row["choices"][:row["label"]] + row["choices"][row["label"] + 1:]:
                if task == "count":
                    assert abs(int(wrong) - int(row["answer"])) <= 3
                else:  # same length, differing in at most two positions: a near miss
                    a, w = row["answer"].split(" "), wrong.split(" ")
                    assert len(w) == len(a) and 1 <= sum(x != y for x, y in zip(a, w)) <= 2


@pytest.mark.parametrize("task", TASKS)
def test_splits_are_disjoint(task):
    prompts = {split: {r["prompt"] for r in _rows(task, split)} for split in SPLIT_SIZES}
    assert not prompts["eval"] & prompts["dev"]
    assert not prompts["train"] & (prompts["eval"] | prompts["dev"])


def test_count_answers_spread_so_chance_is_low():
    answers = [r["answer"] for r in _rows("count")]
    assert max(answers.count(str(c)) for c in range(5)) / len(answers) < 0.3


def test_generator_rebuilds_the_committed_files(tmp_path):
    make = _load_tool("make_toy_data")
    written = make.write_splits(tmp_path, seed=0)
    assert len(written) == len(TASKS) * len(SPLIT_SIZES)
    for path in written:
        assert path.read_bytes() == (DATA_DIR / path.relative_to(tmp_path)).read_bytes(), path
    other = make.write_splits(tmp_path / "other", seed=1)
    assert other[0].read_bytes() != written[0].read_bytes()


# ---------------------------------------------------------------------------- the checkpoint
def test_tokenizer_loads_offline_and_round_trips(tokenizer):
    text = "sort: 5 2 9 1 = 1 2 5 9\n"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    # every character is one token except the task word
    assert len(ids) == 1 + 1 + len(text) - len("sort")
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in ids
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>", "</s>", "<pad>", "<unk>")


def test_checkpoint_is_a_small_float32_mixtral(model):
    assert model.config.model_type == "mixtral"
    assert (model.config.num_local_experts, model.config.num_experts_per_tok) == (8, 2)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(f.stat().st_size for f in MODEL_DIR.iterdir()) < 16e6


@pytest.mark.parametrize("task", TASKS)
def test_full_model_is_well_above_chance(task, full_accuracy):
    assert full_accuracy[task] >= 80.0
    assert full_accuracy[task] >= CHANCE[task] + 50.0


def test_slicing_experts_equals_masking_their_router_logits(tokenizer):
    prune = _load_tool("train_toy_moe").prune_experts
    keep = [[0, 2, 5, 7], [1, 2, 3, 4], [0, 1, 6, 7], [3, 4, 5, 6]]
    batch = torch.tensor([tokenizer(r["prompt"])["input_ids"] for r in _rows("copy") if r["prompt"].count(" ") == 6])
    masked = _load_model()
    hooks = _mask_experts(masked, keep)
    sliced = prune(_load_model(), keep)
    assert sliced.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 4
    with torch.no_grad():
        expected = masked(input_ids=batch).logits
        got = sliced(input_ids=batch).logits
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        unpruned = masked(input_ids=batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(unpruned, expected, atol=1e-3)  # the mask did change something


def test_random_pruning_to_half_the_experts_hurts_some_skill(tokenizer, full_accuracy):
    """Random 4-of-8 per layer, three fixed seeds: some task loses at least 20 points on average."""
    drops = {task: [] for task in TASKS}
    for seed in (0, 1, 2):
        rng = random.Random(seed)
        pruned = _load_model()
        _mask_experts(pruned, [sorted(rng.sample(range(8), 4)) for _ in pruned.model.layers])
        for task in TASKS:
            drops[task].append(full_accuracy[task] - _exact_match(pruned, tokenizer, _rows(task)[:N_ITEMS]))
    mean_drop = {task: sum(d) / len(d) for task, d in drops.items()}
    assert max(mean_drop.values()) >= 20.0, mean_drop


# ------------------------------------------------------------------------------- the trainer
def _smoke_train(seed: int) -> dict[str, torch.Tensor]:
    tool = _load_tool("train_toy_moe")
    tool.set_determinism(seed, threads=1)
    tokenizer = tool.build_tokenizer()
    shape = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    model = tool.build_model(len(tokenizer), shape=shape)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    tool.train(model, tokenizer, steps=20, seed=seed, batch_size=8, log_every=0)
    final = model.state_dict()
    assert any(not torch.equal(initial[k], final[k]) for k in final)  # training moved the weights
    return {k: v.clone() for k, v in final.items()}


@pytest.fixture
def restore_torch_settings():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_smoke_retrain_is_deterministic(restore_torch_settings):
    first, second, other_seed = _smoke_train(0), _smoke_train(0), _smoke_train(1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other_seed[k]) for k in first)


# ~15 minutes; `python -m pytest -m slow` runs it. test_smoke_retrain_is_deterministic covers the trainer
@pytest.mark.slow
def test_documented_rebuild_reproduces_the_readme_table(tmp_path, restore_torch_settings):
    readme = (MODEL_DIR / "README.md").read_text()
    command = re.search(r"python tools/train_toy_moe\.py --out models/toy-moe (--steps \d+ --seed \d+ --threads \d+)",
                        readme)
    assert command, "README.md lacks the rebuild command"
    tool = _load_tool("train_toy_moe")
    out = tmp_path / "toy-moe"
    tool.main(["--out", str(out), "--data", str(DATA_DIR), *command.group(1).split()])
    table = lambda text: text[text.index("| task |"):]  # noqa: E731
    assert table((out / "README.md").read_text()) == table(readme)
