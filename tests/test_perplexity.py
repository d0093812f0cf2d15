"""Corpus perplexity: the 'text' loader, RollingPPLInferencer and PerplexityEvaluator.

Expected values are computed here directly from the transformers model (one forward per
context, log-softmax read by hand) and from the metric definitions written out again, never
read back from harness code.
"""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from harness.datasets.text import load_text
from harness.errors import HarnessError
from harness.io import PredictionStore
from harness.models.hf_causal_lm import HFCausalLM
from harness.openicl.evaluators.perplexity import PerplexityEvaluator
from harness.openicl.inferencers.rolling import RollingPPLInferencer
from harness.tasks import infer
from tests.tiny import SHARED, require_shared

C4 = SHARED / "data" / "c4" / "c4-validation.00000-of-00008.first1025.jsonl"
SHORT = "Question: is the sky blue?"  # 15 tokens of the tiny tokenizer


@pytest.fixture(scope="module")
def lm(tiny_mixtral_path):
    return HFCausalLM(str(tiny_mixtral_path), abbr="tiny", max_seq_len=64, batch_size=2, add_special_tokens=False)


def bare_tokens(lm, text):
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def direct_logprob(model, sequence: list[int], position: int, context_start: int) -> float:
    """log P(sequence[position] | sequence[context_start:position]) from one plain forward."""
    with torch.no_grad():
        logits = model(torch.tensor([sequence[context_start:position]])).logits[0, -1].double()
    return float(logits.log_softmax(-1)[sequence[position]])


def run_inferencer(lm, texts, stride=None, store=None):
    inferencer = RollingPPLInferencer(stride=stride)
    store = store or PredictionStore(None, None, "")
    inferencer.infer(lm, texts, store)
    return [store.done[i] for i in range(len(texts))]


# ------------------------------------------------------------------------------------ loader
def test_c4_loader_reads_every_record_in_file_order():
    path = require_shared(C4)
    expected = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = load_text(str(path))
    assert len(rows) == len(expected) == 1025
    assert [r["text"] for r in rows] == expected


def test_plain_text_splits(tmp_path):
    file = tmp_path / "corpus.txt"
    file.write_text("first line\nsecond line\n\n\nnew paragraph\n", encoding="utf-8")
    assert load_text(str(file)) == [{"text": "first line\nsecond line\n\n\nnew paragraph\n"}]
    assert [r["text"] for r in load_text(str(file), split="paragraph")] == ["first line\nsecond line", "new paragraph\n"]
    assert [r["text"] for r in load_text(str(file), split="line")] == ["first line", "second line", "new paragraph"]


@pytest.mark.parametrize("content, kwargs, message", [
    (None, {}, "not found"),
    ("", {}, "holds no text"),
    ("  \n\n", {}, "holds no text"),
    ('{"text": "a"}\n{"body": "b"}\n', {}, ":2: no text field 'text'"),
    ('{"text": "a"}\n', {"field": "body"}, ":1: no text field 'body'"),
    ('{"text": ""}\n', {}, ":1: field 'text' is empty"),
    ("some text", {"split": "sentence"}, "split='sentence'"),
])
def test_bad_corpus_files_are_one_line_errors(tmp_path, content, kwargs, message):
    suffix = ".jsonl" if content and content.startswith("{") else ".txt"
    file = tmp_path / f"corpus{suffix}"
    if content is not None:
        file.write_text(content, encoding="utf-8")
    with pytest.raises(HarnessError, match=re.escape(message)) as info:
        load_text(str(file), **kwargs)
    assert "\n" not in str(info.value)


# -------------------------------------------------------------------------------- inferencer
def test_a_text_that_fits_one_window_equals_a_full_sequence_forward(lm):
    tokens = [lm.prefix_token_id] + bare_tokens(lm, SHORT)
    with torch.no_grad():
        logprobs = lm.model(torch.tensor([tokens])).logits[0].double().log_softmax(-1)
    expected = sum(float(logprobs[t, tokens[t + 1]]) for t in range(len(tokens) - 1))
    [record] = run_inferencer(lm, [SHORT])
    assert record["prediction"]["num_tokens"] == len(tokens) - 1
    assert record["prediction"]["loglikelihood"] == pytest.approx(expected, abs=1e-4)


def test_a_stride_gives_each_token_the_hand_checked_context(tiny_mixtral_path):
    """15 tokens after the prefix, windows of 6 tokens, stride 3: the first window scores positions
    1-5 from the start; later windows end 3 further on and start 6 before their end."""
    lm = HFCausalLM(str(tiny_mixtral_path), abbr="tiny", max_seq_len=6, batch_size=3, add_special_tokens=False)
    sequence = [lm.prefix_token_id] + bare_tokens(lm, SHORT)
    assert len(sequence) == 16, "the tiny tokenizer changed; rewrite the table below for the new length"
    context_start = {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 3, 7: 3, 8: 3, 9: 6, 10: 6, 11: 6, 12: 9, 13: 9, 14: 9, 15: 10}
    expected = sum(direct_logprob(lm.model, sequence, p, s) for p, s in context_start.items())
    [record] = run_inferencer(lm, [SHORT], stride=3)
    assert record["prediction"]["num_tokens"] == 15
    assert record["prediction"]["loglikelihood"] == pytest.approx(expected, abs=1e-4)
    # disjoint windows (the default) give a different, lm-eval-style split: 1-5 from 0, 6-10 from 5, ...
    disjoint = {p: 0 if p <= 5 else 5 * ((p - 1) // 5) for p in range(1, 16)}
    [default] = run_inferencer(lm, [SHORT])
    assert default["prediction"]["loglikelihood"] == pytest.approx(
        sum(direct_logprob(lm.model, sequence, p, s) for p, s in disjoint.items()), abs=1e-4)


def test_an_interrupted_run_resumes_with_only_the_unfinished_documents(lm, tmp_path):
    texts = ["The quick brown fox jumps.", SHORT, "The lazy dog jumps over the fox.", "Answer: yes. A. Yes B. No"]
    uninterrupted = run_inferencer(lm, texts)
    final, partial = tmp_path / "x.json", tmp_path / "x.partial.jsonl"

    class Stop(Exception):
        pass

    real = lm.score_rolling
    seen = []

    def interrupted(requests, stride=None, on_batch=None, batch_size=None):
        def first_batch_then_stop(positions, results):
            on_batch(positions, results)
            raise Stop
        return real(requests, stride, first_batch_then_stop, 1)

    lm.score_rolling = interrupted
    try:
        with pytest.raises(Stop):
            RollingPPLInferencer().infer(lm, texts, PredictionStore(final, partial, "run"))
    finally:
        del lm.score_rolling
    resumed_store = PredictionStore(final, partial, "run")
    assert len(resumed_store.done) == 1

    def spy(requests, stride=None, on_batch=None, batch_size=None):
        seen.append(len(requests))
        return real(requests, stride, on_batch, batch_size)

    lm.score_rolling = spy
    try:
        resumed = run_inferencer(lm, texts, store=resumed_store)
    finally:
        del lm.score_rolling
    assert seen == [3]
    for a, b in zip(resumed, uninterrupted):
        assert a["prediction"]["loglikelihood"] == pytest.approx(b["prediction"]["loglikelihood"], abs=1e-5)


@pytest.mark.parametrize("stride", [0, -2, 1.5, "8", True])
def test_a_stride_that_is_not_a_positive_integer_is_refused(stride):
    with pytest.raises(HarnessError, match="must be a positive integer"):
        RollingPPLInferencer(stride=stride)


def test_a_stride_longer_than_the_window_is_refused_before_the_work_dir_exists(tiny_mixtral_path, tmp_path, capsys):
    config = tmp_path / "ppl.py"
    corpus = tmp_path / "data" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text(SHORT, encoding="utf-8")
    config.write_text(
        f"models = [dict(type='HFCausalLM', abbr='tiny', path={str(tiny_mixtral_path)!r}, max_seq_len=16)]\n"
        "datasets = [dict(abbr='corpus', reader_cfg=dict(type='text', path='./data/corpus.txt'),\n"
        "    infer_cfg=dict(prompt_template=dict(template='{text}'),\n"
        "                   inferencer=dict(type='RollingPPLInferencer', stride=16)),\n"
        "    eval_cfg=dict(evaluator=dict(type='PerplexityEvaluator')))]\n")
    work_dir = tmp_path / "out"
    assert infer.main([str(config), "--work_dir", str(work_dir), "--data_root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "stride=16 is larger than a window allows (max_seq_len 16 - 1 = 15)" in err
    assert not work_dir.exists()


# --------------------------------------------------------------------------------- end to end
def test_infer_on_a_user_file_writes_lm_eval_metrics(tiny_mixtral_path, tmp_path):
    """dataset_cfgs/text_ppl.py on a one-document file: metrics from the direct forward."""
    text = "The quick brown fox jumps over the lazy dog.\n  Question: is the sky blue? Answer: yes. "
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    model_cfg = tmp_path / "model.py"
    model_cfg.write_text(f"models = [dict(type='HFCausalLM', abbr='tiny', path={str(tiny_mixtral_path)!r}, "
                         "max_seq_len=128, add_special_tokens=False)]\n")
    work_dir = tmp_path / "out"
    assert infer.main(["dataset_cfgs/text_ppl.py", "--model_cfg", str(model_cfg), "--data_root", str(tmp_path),
                       "--work_dir", str(work_dir)]) == 0
    results = json.loads((work_dir / "results" / "tiny" / "text_ppl.json").read_text())

    lm = HFCausalLM(str(tiny_mixtral_path), max_seq_len=128, add_special_tokens=False)
    tokens = [lm.prefix_token_id] + bare_tokens(lm, text)
    with torch.no_grad():
        logprobs = lm.model(torch.tensor([tokens])).logits[0].double().log_softmax(-1)
    nll = -sum(float(logprobs[t, tokens[t + 1]]) for t in range(len(tokens) - 1))
    words = len(re.split(r"\s+", text))  # lm-eval's count: the trailing space adds an empty piece
    assert words == 17  # 9 + 5 + 2 words, and the empty piece after the trailing space
    num_bytes = len(text.encode("utf-8"))
    assert results["loss"] == pytest.approx(nll / (len(tokens) - 1), rel=1e-5)
    assert results["token_perplexity"] == pytest.approx(math.exp(nll / (len(tokens) - 1)), rel=1e-5)
    assert results["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-5)
    assert results["byte_perplexity"] == pytest.approx(math.exp(nll / num_bytes), rel=1e-5)
    assert results["bits_per_byte"] == pytest.approx(nll / num_bytes / math.log(2), rel=1e-5)
    assert results["primary_metric"] == "token_perplexity"


def test_c4_config_pools_documents_by_tokens(tiny_mixtral_path, tmp_path):
    """dataset_cfgs/c4_ppl.py on the first two C4 documents: the corpus loss is the token-weighted
    mean of the documents' losses, not the mean of per-document perplexities."""
    require_shared(C4)
    model_cfg = tmp_path / "model.py"
    model_cfg.write_text(f"models = [dict(type='HFCausalLM', abbr='tiny', path={str(tiny_mixtral_path)!r}, "
                         "max_seq_len=256, batch_size=4, add_special_tokens=False)]\n")
    work_dir = tmp_path / "out"
    args = ["dataset_cfgs/c4_ppl.py", "--model_cfg", str(model_cfg), "--data_root", str(SHARED / "data"),
            "--max_num", "2", "--work_dir", str(work_dir)]
    assert infer.main(args) == 0
    predictions = json.loads((work_dir / "predictions" / "tiny" / "c4_validation_ppl.json").read_text())
    results = json.loads((work_dir / "results" / "tiny" / "c4_validation_ppl.json").read_text())
    docs = [json.loads(line)["text"] for line in C4.read_text(encoding="utf-8").splitlines()[:2]]
    records = [predictions[str(i)]["prediction"] for i in range(2)]
    lm = HFCausalLM(str(tiny_mixtral_path), max_seq_len=256, add_special_tokens=False)
    for doc, record in zip(docs, records):
        assert record["num_tokens"] == len(bare_tokens(lm, doc)) > 255  # longer than one window
        assert record["num_bytes"] == len(doc.encode("utf-8"))
    nll = -sum(r["loglikelihood"] for r in records)
    assert results["loss"] == pytest.approx(nll / sum(r["num_tokens"] for r in records), rel=1e-9)
    assert results["num_documents"] == 2
    # a rerun reuses the finished predictions
    lm_calls = []
    original = HFCausalLM.score_rolling
    HFCausalLM.score_rolling = lambda self, *a, **k: lm_calls.append(len(a[0])) or original(self, *a, **k)
    try:
        assert infer.main(args) == 0
    finally:
        HFCausalLM.score_rolling = original
    assert sum(lm_calls) == 0  # no document is scored again


def test_evaluator_refuses_records_of_another_inferencer():
    with pytest.raises(HarnessError, match="not a RollingPPLInferencer record"):
        PerplexityEvaluator().score(["A"], [None])
