"""End-to-end runs of harness/tasks/infer.py on real data from ../shared/data with a tiny model."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.models.hf_causal_lm import HFCausalLM
from harness.tasks import eval as eval_task
from harness.tasks import infer

REPO = Path(__file__).resolve().parents[1]

MODEL = """
models = [dict(type='HFCausalLM', abbr='tiny-mixtral', max_seq_len=192, max_out_len=8, batch_size=8,
               meta_template=dict(begin='<s>', round=[dict(role='HUMAN', begin='[INST]', end='[/INST]'),
                                                      dict(role='BOT', begin='', end='</s>', generate=True)]))]
"""

BOOLQ = MODEL + """
boolq_datasets = [dict(
    abbr='boolq_gen',
    reader_cfg=dict(type='jsonl', path='./data/boolq/val.jsonl', input_columns=['question', 'passage'],
                    output_column='label', label_map={'true': 'A', 'false': 'B'}, test_range='[100:200]'),
    subset=dict(range=[0, 20]),
    infer_cfg=dict(
        prompt_template=dict(template=dict(round=[
            dict(role='HUMAN', prompt='{passage}\\nQuestion: {question}\\nA. Yes\\nB. No\\nAnswer:'),
            dict(role='BOT', prompt='')])),
        retriever=dict(type='ZeroRetriever'),
        inferencer=dict(type='GenInferencer', max_out_len=4)),
    eval_cfg=dict(evaluator=dict(type='AccEvaluator'), pred_postprocessor=dict(type='first_capital')),
)]
"""

GSM8K = MODEL + """
gsm8k_datasets = [dict(
    abbr='gsm8k_gen',
    reader_cfg=dict(type='jsonl', path='./data/gsm8k/test.jsonl', input_columns=['question'], output_column='answer'),
    subset=dict(range=[0, 16]),
    infer_cfg=dict(
        prompt_template=dict(template='Question: {question}\\nAnswer:'),
        inferencer=dict(type='GenInferencer')),
    eval_cfg=dict(evaluator=dict(type='Gsm8kEvaluator'), pred_postprocessor=dict(type='gsm8k'),
                  dataset_postprocessor=dict(type='gsm8k_dataset')),
)]
"""

SQUAD = MODEL + """
squad_datasets = [dict(
    abbr='squad_gen',
    reader_cfg=dict(type='squad', path='./data/squad/dev-v1.1.json.zip', input_columns=['context', 'question'],
                    output_column='answers'),
    subset=dict(range=[0, 16]),
    infer_cfg=dict(
        prompt_template=dict(template=dict(round=[
            dict(role='HUMAN', prompt='{context}\\nQuestion: {question}'), dict(role='BOT', prompt='Answer:')])),
        inferencer=dict(type='GenInferencer', max_out_len=6)),
    eval_cfg=dict(evaluator=dict(type='SQuADEvaluator')),
)]
"""

BOOLQ_PPL = MODEL + """
boolq_datasets = [dict(
    abbr='boolq_ppl',
    reader_cfg=dict(type='jsonl', path='./data/boolq/val.jsonl', input_columns=['question', 'passage'],
                    output_column='label', label_map={'true': 'A', 'false': 'B'}),
    subset=dict(range=[0, 12]),
    infer_cfg=dict(
        prompt_template=dict(template='{passage}\\nQuestion: {question}?\\nAnswer:'),
        inferencer=dict(type='PPLInferencer', mode='loglikelihood', continuations={'A': ' yes', 'B': ' no'})),
    eval_cfg=dict(evaluator=dict(type='AccEvaluator')),
)]
"""


def write_config(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_infer(config, model_path, work_dir, shared, *extra):
    argv = [config, "--model_path", str(model_path), "--work_dir", str(work_dir),
            "--data_root", str(shared / "data"), *extra]
    return infer.main(argv)


def read_json(path):
    return json.loads(Path(path).read_text())


def first_capital(text):
    return next((c for c in text if c.isupper()), "")


def test_boolq_generation_end_to_end(tmp_path, tiny_mixtral_path, shared_dir):
    work = tmp_path / "work"
    assert run_infer(write_config(tmp_path, BOOLQ), tiny_mixtral_path, work, shared_dir) == 0
    preds = read_json(work / "predictions" / "tiny-mixtral" / "boolq_gen.json")
    assert list(preds) == [str(i) for i in range(20)]
    rows = [json.loads(line) for line in (shared_dir / "data/boolq/val.jsonl").read_text().splitlines()]
    for key, record in preds.items():
        source = rows[record["index"]]
        assert record["index"] == 100 + int(key)  # test_range [100:200], then the first 20
        assert record["gold"] == ("A" if source["label"] in (True, "true") else "B")
        assert record["origin_prompt"].startswith("<s>[INST]" + source["passage"][:20])
        assert record["origin_prompt"].endswith("\nA. Yes\nB. No\nAnswer:[/INST]")
    expected = 100 * sum(first_capital(r["prediction"]) == r["gold"] for r in preds.values()) / len(preds)
    assert read_json(work / "results" / "tiny-mixtral" / "boolq_gen.json") == {"accuracy": pytest.approx(expected)}
    assert list((work / "configs").glob("*.py")) and list((work / "logs").glob("*.log"))
    assert not list(work.rglob("*.partial.jsonl")) and not list(work.rglob("*.tmp"))


@pytest.mark.parametrize("config,abbr,metric", [(GSM8K, "gsm8k_gen", "accuracy"), (SQUAD, "squad_gen", "em")])
def test_perfect_and_wrong_answers_score_100_and_0(tmp_path, tiny_mixtral_path, shared_dir, monkeypatch, config, abbr, metric):
    """The plumbing from data to metric: answering with the gold answer must score 100, garbage 0."""
    answers = {}
    if abbr == "gsm8k_gen":
        for row in map(json.loads, (shared_dir / "data/gsm8k/test.jsonl").read_text().splitlines()[:16]):
            answers[row["question"]] = "The answer is " + row["answer"].split("#### ")[-1].replace(",", "")
    else:
        import zipfile
        with zipfile.ZipFile(shared_dir / "data/squad/dev-v1.1.json.zip") as zf:
            data = json.loads(zf.read(zf.namelist()[0]))
        qas = [qa for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]][:16]
        answers = {qa["question"]: qa["answers"][0]["text"] for qa in qas}

    def oracle(self, batch):
        # one batch of generation requests, prompts as (left-truncated) tokens: match on the end of each question
        texts = [self.tokenizer.decode(r.tokens) for r in batch]
        return [next(a for q, a in answers.items() if q[-40:] in t) for t in texts]

    monkeypatch.setattr(HFCausalLM, "_generate_batch", oracle)
    cfg = write_config(tmp_path, config)
    assert run_infer(cfg, tiny_mixtral_path, tmp_path / "right", shared_dir) == 0
    assert read_json(tmp_path / "right/results/tiny-mixtral" / f"{abbr}.json")[metric] == 100.0

    monkeypatch.setattr(HFCausalLM, "_generate_batch", lambda self, batch: ["zzz qqq"] * len(batch))
    assert run_infer(cfg, tiny_mixtral_path, tmp_path / "wrong", shared_dir) == 0
    assert read_json(tmp_path / "wrong/results/tiny-mixtral" / f"{abbr}.json")[metric] == 0.0


def test_ppl_label_scores_equal_a_direct_computation(tmp_path, tiny_mixtral_path, shared_dir):
    work = tmp_path / "work"
    assert run_infer(write_config(tmp_path, BOOLQ_PPL), tiny_mixtral_path, work, shared_dir) == 0
    preds = read_json(work / "predictions" / "tiny-mixtral" / "boolq_ppl.json")
    lm = HFCausalLM(str(tiny_mixtral_path), max_seq_len=192)
    for record in list(preds.values())[:4]:
        context = record["origin_prompt"][: -len(" yes")] if record["prediction"] == "A" else record["origin_prompt"][: -len(" no")]
        for label, continuation in (("A", " yes"), ("B", " no")):
            ids = lm.encode(context + continuation)[-192:]
            n_ctx = len(lm.encode(context)) - (len(lm.encode(context + continuation)) - len(ids))
            with torch.no_grad():
                logprobs = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].float(), -1)
            direct = sum(logprobs[t - 1, ids[t]].item() for t in range(n_ctx, len(ids)))
            assert record["label_scores"][label]["loglikelihood"] == pytest.approx(direct, abs=1e-5)
        scores = record["label_scores"]
        assert record["prediction"] == max("AB", key=lambda k: scores[k]["loglikelihood"])
    results = read_json(work / "results" / "tiny-mixtral" / "boolq_ppl.json")
    expected = 100 * sum(r["prediction"] == r["gold"] for r in preds.values()) / len(preds)
    assert results["accuracy"] == pytest.approx(expected) and "accuracy_norm" in results


def test_interrupted_run_resumes_without_recomputing(tmp_path, tiny_mixtral_path, shared_dir, monkeypatch):
    cfg = write_config(tmp_path, BOOLQ)
    clean = tmp_path / "clean"
    assert run_infer(cfg, tiny_mixtral_path, clean, shared_dir, "--batch_size", "4") == 0

    real_generate = HFCausalLM._generate_batch  # one batch of generation requests
    calls = []

    def dies_after_two_batches(self, batch):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append([tuple(r.tokens) for r in batch])
        return real_generate(self, batch)

    monkeypatch.setattr(HFCausalLM, "_generate_batch", dies_after_two_batches)
    work = tmp_path / "work"
    assert run_infer(cfg, tiny_mixtral_path, work, shared_dir, "--batch_size", "4") == 130
    partial = work / "predictions" / "tiny-mixtral" / "boolq_gen.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 8  # header + two batches of 4
    assert not (work / "predictions" / "tiny-mixtral" / "boolq_gen.json").exists()

    done = {p for batch in calls for p in batch}
    calls.clear()
    monkeypatch.setattr(HFCausalLM, "_generate_batch", lambda self, batch: calls.append([tuple(r.tokens) for r in batch]) or real_generate(self, batch))
    assert run_infer(cfg, tiny_mixtral_path, work, shared_dir, "--batch_size", "4") == 0
    redone = [p for batch in calls for p in batch]
    assert len(redone) == 12 and not done & set(redone)
    assert read_json(work / "predictions/tiny-mixtral/boolq_gen.json") == read_json(clean / "predictions/tiny-mixtral/boolq_gen.json")
    assert not partial.exists()

    calls.clear()  # a finished run is reused as it is
    assert run_infer(cfg, tiny_mixtral_path, work, shared_dir, "--batch_size", "4") == 0
    assert calls == []


def test_eval_rescoring_and_summary(tmp_path, tiny_mixtral_path, shared_dir, capsys):
    cfg = write_config(tmp_path, BOOLQ)
    work = tmp_path / "work"
    assert run_infer(cfg, tiny_mixtral_path, work, shared_dir) == 0
    results = work / "results" / "tiny-mixtral" / "boolq_gen.json"
    original = read_json(results)
    results.unlink()
    assert eval_task.main([cfg, "--work_dir", str(work), "--data_root", str(shared_dir / "data")]) == 0
    assert read_json(results) == original

    sys.path.insert(0, str(REPO / "tools"))
    import summarize

    other = tmp_path / "other"
    (other / "results" / "tiny-mixtral").mkdir(parents=True)
    (other / "results" / "tiny-mixtral" / "squad_gen.json").write_text('{"em": 10.0, "f1": 20.0}')
    capsys.readouterr()
    assert summarize.main([str(work), str(other), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0] == "dataset,metric,work,other"
    assert f"boolq_gen,accuracy,{original['accuracy']:.2f},missing" in lines
    assert "squad_gen,em,missing,10.00" in lines
    assert "missing result: other: boolq_gen accuracy" in err and "missing result: work: squad_gen em" in err


def test_command_line_script_runs(tmp_path, tiny_mixtral_path, shared_dir):
    cfg = write_config(tmp_path, BOOLQ)
    proc = subprocess.run(
        [sys.executable, str(REPO / "harness/tasks/infer.py"), cfg, "--model_path", str(tiny_mixtral_path),
         "--work_dir", str(tmp_path / "w"), "--data_root", str(shared_dir / "data"), "--max_num", "3"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"tiny-mixtral/boolq_gen: \{\"accuracy\": ", proc.stdout)
    assert len(read_json(tmp_path / "w/predictions/tiny-mixtral/boolq_gen.json")) == 3


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c.replace("type='jsonl'", "type='jsonl_nope'"), "unknown dataset loader type 'jsonl_nope'"),
        (lambda c: c.replace("./data/boolq/val.jsonl", "./data/boolq/missing.jsonl"), "missing.jsonl"),
        (lambda c: c.replace("{passage}\\n", "{pasage}\\n"), "pasage"),
        (lambda c: c.replace("range=[0, 20]", "range=[0, 0]"), "subset is empty"),
    ],
)
def test_bad_config_gives_a_one_line_error_and_writes_nothing(tmp_path, tiny_mixtral_path, shared_dir, capsys, mutate, message):
    cfg = write_config(tmp_path, mutate(BOOLQ))
    work = tmp_path / "work"
    assert run_infer(cfg, tiny_mixtral_path, work, shared_dir) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (work / "predictions").exists() and not (work / "results").exists()


def test_missing_config_and_model_path_errors(tmp_path, tiny_mixtral_path, shared_dir, capsys):
    assert run_infer(str(tmp_path / "nope.py"), tiny_mixtral_path, tmp_path / "w", shared_dir) == 2
    assert "config file" in capsys.readouterr().err
    cfg = write_config(tmp_path, BOOLQ)
    assert run_infer(cfg, tmp_path / "no_such_model", tmp_path / "w", shared_dir) == 2
    err = capsys.readouterr().err
    assert "no_such_model does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w" / "predictions").exists()


def test_infer_loads_a_materialized_compressed_checkpoint(tmp_path, tiny_mixtral_path, shared_dir):
    """A merging plan materialised to a folder evaluates exactly like the plan applied on the fly."""
    from harness.compress import save_plan
    from harness.compress.materialize import materialize
    from harness.compress.plan import CompressionPlan, LayerPlan

    generator = torch.Generator().manual_seed(0)
    layers = {l: LayerPlan(merge=torch.rand(3, 8, generator=generator), router=torch.rand(3, 8, generator=generator))
              for l in range(2)}
    plan = CompressionPlan(2, 8, layers)
    plan_path = tmp_path / "plan.safetensors"
    save_plan(plan, plan_path)
    lm = HFCausalLM(str(tiny_mixtral_path))
    folder = tmp_path / "compressed"
    materialize(lm.model, plan, folder, tokenizer=lm.tokenizer)
    cfg = write_config(tmp_path, BOOLQ)
    assert run_infer(cfg, tiny_mixtral_path, tmp_path / "on_the_fly", shared_dir, "--coeff_path", str(plan_path)) == 0
    assert run_infer(cfg, folder, tmp_path / "loaded", shared_dir) == 0
    a = read_json(tmp_path / "on_the_fly/predictions/tiny-mixtral/boolq_gen.json")
    b = read_json(tmp_path / "loaded/predictions/tiny-mixtral/boolq_gen.json")
    assert [r["prediction"] for r in a.values()] == [r["prediction"] for r in b.values()]


def test_summary_shows_repeated_runs_as_mean_and_std(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    import summarize

    for name, metrics in {"full": {"accuracy": 90.0}, "random": {"accuracy": 40.0, "accuracy_std": 5.5, "num_runs": 3}}.items():
        (tmp_path / name / "results" / "m").mkdir(parents=True)
        (tmp_path / name / "results" / "m" / "sort.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    assert summarize.main([str(tmp_path / "full"), str(tmp_path / "random"), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    # one dataset: no average row
    assert out.splitlines() == ["dataset,metric,full,random", "sort,accuracy,90.00,40.00 ± 5.50 (3 runs)"]
    assert err == ""  # a spread only repeated runs have is not a missing result
