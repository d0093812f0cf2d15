"""Recovery fine-tuning (harness/training, harness/tasks/finetune.py) on tiny random Mixtrals and the toy MoE."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from harness.compress import apply_plan, load_compressed, save_plan
from harness.compress.plan import CompressionPlan, LayerPlan
from harness.errors import HarnessError
from harness.tasks import finetune
from harness.training import data as ft_data
from harness.training import parts as ft_parts
from harness.training.losses import IGNORE, shift_targets, token_loss
from harness.training.output import save_finetuned
from harness.training.settings import PARTS, RECIPE_CFGS, load_settings
from tests.tiny import _CORPUS

ROOT = Path(__file__).resolve().parents[1]
KEPT = {0: [0, 2, 4, 6], 1: [1, 3, 5, 7]}


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def files(tiny_mixtral_path, tmp_path_factory):
    """Plans, a corpus and a finetune config for the tiny Mixtral."""
    root = tmp_path_factory.mktemp("finetune_files")
    g = torch.Generator().manual_seed(0)
    mixing = torch.rand(3, 8, generator=g)
    plans = {
        "prune": CompressionPlan.from_kept(KEPT, 8, num_layers=2),
        "merge": CompressionPlan(num_layers=2, num_experts=8, layers={
            0: LayerPlan(merge=mixing / mixing.sum(1, keepdim=True), router=torch.eye(8)[[1, 4, 6]]),
            1: LayerPlan(merge=torch.eye(8)[[0, 3, 5]])}),
        "condensed": CompressionPlan(num_layers=2, num_experts=8, layers={
            i: LayerPlan(mode="condensed", merge=torch.eye(8)[[1, 2]], condensed_weights=torch.tensor([0.6, 0.4]))
            for i in range(2)}),
        "misfit": CompressionPlan.from_kept({0: [0, 1]}, 16, num_layers=2),
    }
    paths = {name: save_plan(plan, root / f"{name}.safetensors") for name, plan in plans.items()}
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_CORPUS * 3) + "\n")
    return dict(model=tiny_mixtral_path, plans=paths, corpus=corpus, root=root)


def write_cfg(folder: Path, name: str = "ft.py", parts: str = "experts", lora=None, **train) -> Path:
    settings = {**dict(learning_rate=5e-3, per_device_train_batch_size=4, max_steps=6, save_steps=2, logging_steps=1,
                       seed=0, warmup_steps=0, lr_scheduler_type="constant", dataloader_pin_memory=False), **train}
    path = folder / name
    path.write_text(f"parts = {parts!r}\nlora = {lora!r}\ndata = dict(max_length=32)\ntrain = {settings!r}\n")
    return path


def finetune_cmd(files, work_dir, cfg, recipe="kd", plan="prune", data=None):
    args = ["--model_path", str(files["model"]), "--recipe", recipe, "--finetune_cfg", str(cfg),
            "--work_dir", str(work_dir)]
    args += ["--coeff_path", str(files["plans"][plan])] if plan else []
    args += data if data is not None else ["--train_data", str(files["corpus"])]
    return args


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_compressed(folder).state_dict()


def planned_original(files, plan="prune"):
    from harness.compress import load_plan
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(files["model"], dtype=torch.float32)
    return apply_plan(model, load_plan(files["plans"][plan])).eval()


# ---------------------------------------------------------------------------------------------- losses
def test_kd_loss_equals_a_direct_computation_on_known_logits():
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    labels = torch.tensor([[2, IGNORE, 0, IGNORE], [IGNORE, 4, 1, IGNORE]])
    alpha, T = 0.2, 2.0
    ce = kl = 0.0
    count = 0
    for b in range(2):
        for i in range(4):
            if labels[b, i] == IGNORE:
                continue
            s, t = student[b, i].tolist(), teacher[b, i].tolist()
            ce += -(s[labels[b, i]] - math.log(sum(math.exp(x) for x in s)))
            ps = [math.exp(x / T) / sum(math.exp(y / T) for y in s) for x in s]
            pt = [math.exp(x / T) / sum(math.exp(y / T) for y in t) for x in t]
            kl += T * T * sum(p * math.log(p / q) for p, q in zip(pt, ps))
            count += 1
    got = token_loss(student, labels, teacher, alpha=alpha, temperature=T)
    assert got.tokens == count == 4
    assert got.loss.item() == pytest.approx((ce + alpha * kl) / count, rel=1e-5)
    assert token_loss(student, labels, teacher, alpha, T, num_items=10).loss.item() == pytest.approx(
        (ce + alpha * kl) / 10, rel=1e-5)
    assert token_loss(student, labels).loss.item() == pytest.approx(ce / count, rel=1e-5)


def test_padding_never_counts(tiny_mixtral_path):
    """A padded batch's loss equals the token-weighted loss of its rows run alone, unpadded."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_mixtral_path, dtype=torch.float32).eval()
    rows = [{"input_ids": [1, 5, 9, 14, 20, 7], "counted": [0, 0, 1, 1, 1, 1]},
            {"input_ids": [1, 8, 30], "counted": [0, 1, 1]}]
    batch = ft_data.Collator(pad_token_id=3)(rows)
    assert batch["input_ids"][1, 3:].tolist() == [3, 3, 3] and batch["shift_labels"][1, 2:].tolist() == [IGNORE] * 4
    with torch.no_grad():
        padded = token_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["shift_labels"])
        total, tokens = 0.0, 0
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            alone = token_loss(model(input_ids=ids).logits, shift_targets(ids, torch.tensor([row["counted"]])))
            total, tokens = total + float(alone.ce), tokens + alone.tokens
    assert padded.tokens == tokens == 6
    assert float(padded.loss) == pytest.approx(total / tokens, rel=1e-5)


# ---------------------------------------------------------------------------------------------- data
def test_dataset_config_rows_count_exactly_the_gold_answer_tokens():
    from harness.config import dataset_configs, load_config
    from harness.models.hf_causal_lm import HFCausalLM
    from harness.pipeline import EvalTask

    lm = HFCausalLM(str(ROOT / "models/toy-moe"), max_seq_len=64)
    settings = load_settings("kd", str(ROOT / "finetune_cfgs/toy-moe_kd.py"))
    for cfg, answer_of in (("toy-moe_sort_train.py", lambda row: f" {row['answer']}\n"),
                           ("toy-moe_sort_ppl.py", lambda row: f" {row['choices'][row['label']]}\n")):
        task = EvalTask(dataset_configs(load_config(str(ROOT / "dataset_cfgs" / cfg)))[0], str(ROOT / "data"), 3)
        examples = ft_data.examples_from_task(task, lm, settings.data)
        for example, row in zip(examples, task.data.test_rows):
            answer = [t for t, c in zip(example.input_ids, example.counted) if c]
            prompt = [t for t, c in zip(example.input_ids, example.counted) if not c]
            assert answer == lm.tokenizer(answer_of(row), add_special_tokens=False)["input_ids"] + [lm.tokenizer.eos_token_id]
            assert prompt == lm.encode(row["prompt"])


# ---------------------------------------------------------------------------------------------- parts
def test_parts_select_experts_routers_or_everything(files):
    model = planned_original(files, "merge")
    experts = ft_parts.selected_parameters(model, "experts")
    routers = ft_parts.selected_parameters(model, "routers")
    assert sorted(experts) == sorted(f"model.layers.{i}.mlp.experts.{t}" for i in range(2) for t in ("gate_up_proj", "down_proj"))
    assert sorted(routers) == ["model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight"]
    assert sorted(ft_parts.selected_parameters(model, "experts+routers")) == sorted(experts + routers)
    assert len(ft_parts.selected_parameters(model, "all")) == len(list(model.parameters()))
    with pytest.raises(HarnessError, match="no trainable parameters"):
        ft_parts.check_trainable(planned_original(files, "condensed"), "routers")


# ---------------------------------------------------------------------------------------------- end to end
def test_kd_lowers_the_loss_trains_only_the_kept_experts_and_reloads_as_a_model(files, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    teachers = []
    load_teacher = finetune.load_teacher
    monkeypatch.setattr(finetune, "load_teacher", lambda run, student: teachers.append(load_teacher(run, student)) or teachers[-1])
    work = tmp_path / "kd"
    assert finetune.main(finetune_cmd(files, work, write_cfg(tmp_path))) == 0
    fresh = AutoModelForCausalLM.from_pretrained(files["model"], dtype=torch.float32).state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in teachers[0].state_dict().items())  # the teacher never changes
    history = json.loads((work / "train_log.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0] and all("kl" in h for h in history if "loss" in h)
    assert (work / "loss.png").stat().st_size > 0
    record = json.loads((work / "model/finetune.json").read_text())
    assert record["recipe"] == "kd" and record["checkpoint_kind"] == "plain" and record["global_step"] == 6
    assert record["settings"]["kd"] == {"alpha": 0.2, "temperature": 2.0} and record["data"]["rows"] == 12

    before, after = planned_original(files).state_dict(), weights(work / "model")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.{i}.mlp.experts.{t}" for i in range(2) for t in ("gate_up_proj", "down_proj")}
    # the checkpoint folder is what infer.py loads: the smaller model, four experts per layer
    from harness.models.hf_causal_lm import HFCausalLM

    assert HFCausalLM(str(work / "model")).model.config.num_local_experts == 4
    # a rerun of a finished command changes nothing
    assert finetune.main(finetune_cmd(files, work, write_cfg(tmp_path))) == 0


def test_resume_after_an_interruption_equals_an_uninterrupted_run(files, tmp_path, monkeypatch):
    from harness.training import trainer as ft

    cfg = write_cfg(tmp_path, parts="experts+routers", lr_scheduler_type="linear", warmup_steps=2,
                    gradient_accumulation_steps=2, max_steps=4)
    run = lambda work: finetune.main(finetune_cmd(files, work, cfg, recipe="lm", plan="merge"))
    assert run(tmp_path / "straight") == 0

    original = ft.FinishedCheckpoints.on_save

    def stop_at_2(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        if state.global_step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ft.FinishedCheckpoints, "on_save", stop_at_2)
    work = tmp_path / "resumed"
    assert run(work) == 130
    assert not (work / "model").exists()
    monkeypatch.setattr(ft.FinishedCheckpoints, "on_save", original)
    torn = work / "trainer/checkpoint-4"  # a checkpoint the kill interrupted: no marker
    torn.mkdir()
    (torn / "trainable.safetensors").write_bytes(b"torn")
    assert run(work) == 0
    assert (torn / ft.MARKER).is_file() and (torn / "trainable.safetensors").read_bytes() != b"torn"  # redone
    assert json.loads((work / "model/finetune.json").read_text())["checkpoint_kind"] == "compressed"
    straight, resumed = weights(tmp_path / "straight/model"), weights(work / "model")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    losses = lambda d: [h["loss"] for h in json.loads((d / "train_log.json").read_text()) if "loss" in h]
    assert losses(work) == losses(tmp_path / "straight")


def test_lora_trains_adapters_and_merges_them_into_the_experts_only(files, tmp_path):
    cfg = write_cfg(tmp_path, lora=dict(r=2, alpha=4), max_steps=3, save_steps=3)
    work = tmp_path / "lora"
    assert finetune.main(finetune_cmd(files, work, cfg, recipe="lm", plan="prune")) == 0
    before, after = planned_original(files).state_dict(), weights(work / "model")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".mlp.experts." in k for k in changed)


def test_saved_model_scores_the_same_as_the_in_memory_model(files, tmp_path):
    from harness.models.api import ScoreRequest
    from harness.models.hf_causal_lm import HFCausalLM

    for plan in ("prune", "merge"):
        lm = HFCausalLM(str(files["model"]))
        from harness.cli import apply_compression

        apply_compression(lm, str(files["plans"][plan]))
        with torch.no_grad():  # stand-in for training: move every kept expert and router
            for name in ft_parts.selected_parameters(lm.model, "experts+routers"):
                lm.model.get_parameter(name).add_(0.01 * torch.randn_like(lm.model.get_parameter(name)))
        requests = [[ScoreRequest(lm.encode(text), 2)] for text in _CORPUS]
        expected = lm.score(requests)
        save_finetuned(lm.model, lm.tokenizer, tmp_path / plan, {"recipe": "test"})
        assert HFCausalLM(str(tmp_path / plan)).score(requests) == expected


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case, match", [
    ("no_teacher", "needs a teacher"),
    ("misfit", "experts"),
    ("no_trainable", "no trainable parameters"),
    ("lm_on_cfg", "--recipe lm"),
    ("bad_train_key", "TrainingArguments"),
    ("bad_parts", "parts="),
    ("no_gold", "no gold answers"),
])
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, capsys, case, match):
    cfg = write_cfg(tmp_path)
    work = tmp_path / "work"
    args = {
        "no_teacher": finetune_cmd(files, work, cfg, plan=None),
        "misfit": finetune_cmd(files, work, cfg, plan="misfit"),
        "no_trainable": finetune_cmd(files, work, write_cfg(tmp_path, "r.py", parts="routers"), plan="condensed"),
        "lm_on_cfg": finetune_cmd(files, work, cfg, recipe="lm", data=["--train_cfg", str(ROOT / "dataset_cfgs/toy-moe_sort_train.py")]),
        "bad_train_key": finetune_cmd(files, work, write_cfg(tmp_path, "b.py", no_such_option=1)),
        "bad_parts": finetune_cmd(files, work, write_cfg(tmp_path, "p.py", parts="attention")),
        "no_gold": None,
    }[case]
    if case == "no_gold":
        rows = tmp_path / "rows.jsonl"
        rows.write_text('{"prompt": "a b", "answer": "b"}\n{"prompt": "c d", "answer": ""}\n')
        (tmp_path / "nogold.py").write_text(
            f"datasets = [dict(abbr='x', reader_cfg=dict(type='jsonl', path={str(rows)!r}, input_columns=['prompt'],"
            " output_column='answer'),"
            " infer_cfg=dict(prompt_template=dict(template='{prompt}'), inferencer=dict(type='GenInferencer')))]\n")
        args = finetune_cmd(files, work, cfg, data=["--train_cfg", str(tmp_path / "nogold.py")])
    assert finetune.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars of a model load
    assert err.startswith("error: ") and "\n" not in err and match in err
    assert not work.exists()


def test_the_papers_finetune_configs_load_and_build_training_arguments(tmp_path):
    for recipe, name in RECIPE_CFGS.items():
        settings = load_settings(recipe, None)
        assert settings.source.endswith(name) and settings.parts in PARTS
        finetune.training_arguments(settings, tmp_path / recipe)
    kd = load_settings("kd", None)
    assert kd.kd == {"alpha": 0.2, "temperature": 2.0}
    assert (kd.train["adam_beta2"], kd.train["adam_epsilon"], kd.train["warmup_steps"], kd.train["weight_decay"]) == (0.98, 1e-6, 16, 0.01)
    lm = load_settings("lm", None)
    assert lm.data["max_length"] == 256 and lm.train["lr_scheduler_kwargs"]["lr_end"] == 5e-6
    for path in sorted((ROOT / "finetune_cfgs").glob("*.py")):
        finetune.training_arguments(load_settings("kd", str(path)), tmp_path / path.stem)


@pytest.mark.slow
def test_kill_9_while_saving_a_checkpoint_then_rerun_equals_an_uninterrupted_run(files, tmp_path):
    import subprocess
    import sys

    cfg = write_cfg(tmp_path, max_steps=4)
    assert finetune.main(finetune_cmd(files, tmp_path / "straight", cfg, recipe="lm")) == 0
    work = tmp_path / "killed"
    script = (
        "import os, signal, sys\n"
        "from harness.training import trainer as ft\n"
        "save = ft.FinetuneTrainer._save\n"
        "def dying(self, output_dir=None, state_dict=None):\n"
        "    if self.state.global_step == 4:\n"
        "        os.makedirs(output_dir, exist_ok=True)\n"
        "        open(os.path.join(output_dir, ft.TRAINABLE_FILE), 'wb').write(b'half')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    save(self, output_dir, state_dict)\n"
        "ft.FinetuneTrainer._save = dying\n"
        "from harness.tasks import finetune\n"
        "finetune.main(sys.argv[1:])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *finetune_cmd(files, work, cfg, recipe="lm")],
                          cwd=ROOT, capture_output=True)
    assert done.returncode == -9 and not (work / "model").exists()
    assert finetune.main(finetune_cmd(files, work, cfg, recipe="lm")) == 0
    straight, resumed = weights(tmp_path / "straight/model"), weights(work / "model")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
