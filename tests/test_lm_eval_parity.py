"""Parity with lm-evaluation-harness on a tiny model, with lm-eval-style task definitions written
here (no lm-eval import): multiple choice (acc, acc_norm) and LAMBADA-style loglikelihood (greedy
accuracy, perplexity). The reference numbers come from this file's own forward passes and lm-eval's
formulas (lm_eval/api/task.py ConfigurableTask.process_results, HFLM._encode_pair)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from harness.models.hf_causal_lm import HFCausalLM
from harness.openicl.inferencers.ppl import Choice, PPLInferencer
from harness.models.api import Score
from harness.pipeline import EvalTask

# multiple choice: lm-eval's piqa/arc shape, doc_to_text 'Question: {q}\nAnswer:', target delimiter ' '
MC_ITEMS = [
    {"q": "What is blue?", "choices": ["the sky", "a fox jumps over the lazy dog"], "label": 0},
    {"q": "Is the sky blue?", "choices": ["yes", "no", "A"], "label": 1},
    {"q": "1 2 3", "choices": ["4 5 6 7 8 9", "#"], "label": 0},
    {"q": "The quick brown fox", "choices": ["jumps", "step by step.", "B"], "label": 2},
    {"q": "According to the passage", "choices": ["Yes", "No"], "label": 0},
    {"q": "Let's think", "choices": ["step", "by step by step by step"], "label": 1},
]
# loglikelihood: lm-eval's lambada_openai shape, context = all but the last word, target = ' ' + last word
LAMBADA_TEXTS = ["The quick brown fox jumps over the lazy dog", "Question: is the sky blue? Answer: yes",
                 "Let's think step by step", "According to the above passage"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def lm(tiny_mixtral_path):
    return HFCausalLM(str(tiny_mixtral_path), batch_size=4, max_seq_len=64)


def lm_eval_loglikelihood(lm, context: str, continuation: str) -> tuple[float, bool]:
    """lm-eval's HFLM: trailing context spaces move to the continuation, continuation tokens are the
    tail of the joint encoding, one forward over context + continuation (without its last token)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    tok = lm.tokenizer  # lm-eval's tok_encode: the tokenizer's own special-token default (BOS here)
    whole = tok.encode(context + continuation)
    context_enc = tok.encode(context)
    continuation_enc = whole[len(context_enc):]
    if not context_enc:
        context_enc = [tok.eos_token_id]
    tokens = torch.tensor([(context_enc + continuation_enc)[:-1]])
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(tokens).logits[0].double(), dim=-1)
    tail = logprobs[-len(continuation_enc):]
    target = torch.tensor(continuation_enc)
    ll = tail.gather(1, target[:, None]).sum().item()
    return ll, bool((tail.argmax(dim=-1) == target).all())


def test_multiple_choice_acc_and_acc_norm_as_lm_eval(lm, tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", MC_ITEMS)
    cfg = dict(abbr="mc", reader_cfg=dict(type="jsonl", path=path, output_column="label",
                                          row_transforms=[dict(type="fill", template="Question: {q}\nAnswer:",
                                                               into="query")]),
               infer_cfg=dict(prompt_template=dict(template="{query}"),
                              inferencer=dict(type="PPLInferencer", continuations="choices",
                                              choice_template=" {choice}")),
               eval_cfg=dict(evaluator=dict(type="AccEvaluator")))
    task = EvalTask(cfg)
    predictions = task.infer(lm)
    metrics = task.evaluate(predictions)

    acc, acc_norm, old_norm_differs = [], [], 0
    for k, item in enumerate(MC_ITEMS):
        context = f"Question: {item['q']}\nAnswer:"
        lls = [lm_eval_loglikelihood(lm, context, " " + c)[0] for c in item["choices"]]
        ours = [predictions[str(k)]["label_scores"][str(i)]["loglikelihood"] for i in range(len(lls))]
        assert ours == pytest.approx(lls, abs=1e-4)
        pred = max(range(len(lls)), key=lambda i: lls[i])
        pred_norm = max(range(len(lls)), key=lambda i: lls[i] / len(item["choices"][i]))  # len(choice)
        assert (predictions[str(k)]["prediction"], predictions[str(k)]["prediction_norm"]) == (pred, pred_norm)
        acc.append(pred == item["label"])
        acc_norm.append(pred_norm == item["label"])
        with_delimiter = max(range(len(lls)), key=lambda i: lls[i] / len(" " + item["choices"][i]))
        old_norm_differs += with_delimiter != pred_norm
    assert metrics["accuracy"] == pytest.approx(100 * sum(acc) / len(acc))
    assert metrics["accuracy_norm"] == pytest.approx(100 * sum(acc_norm) / len(acc_norm))
    # the items are chosen so the denominator matters: dividing by ' ' + choice picks another label
    assert old_norm_differs >= 1


def test_lambada_style_greedy_accuracy_and_perplexity_as_lm_eval(lm, tmp_path):
    path = write_jsonl(tmp_path / "lambada.jsonl", [{"text": t} for t in LAMBADA_TEXTS])
    cfg = dict(abbr="lambada", reader_cfg=dict(type="jsonl", path=path, row_transforms=["lm_eval_lambada"]),
               infer_cfg=dict(prompt_template=dict(template="{context}"),
                              inferencer=dict(type="PPLInferencer", continuations="continuation")),
               eval_cfg=dict(evaluator=dict(type="LoglikelihoodEvaluator")))
    task = EvalTask(cfg)
    metrics = task.evaluate(task.infer(lm))
    reference = [lm_eval_loglikelihood(lm, " ".join(t.split(" ")[:-1]), " " + t.split(" ")[-1])
                 for t in LAMBADA_TEXTS]
    assert metrics["accuracy"] == pytest.approx(100 * sum(g for _, g in reference) / len(reference))
    assert metrics["perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in reference) / len(reference)),
                                                  rel=1e-4)


def clean_tokens(lm, context: str) -> list[tuple[int, str]]:
    """(token, text) pairs that, appended to ``context``, decode and re-encode to exactly one token."""
    tokens = lm.tokenizer.encode(context)
    found = []
    for token in range(lm.model.config.vocab_size):
        text = lm.tokenizer.decode(tokens + [token], skip_special_tokens=True)
        if text.startswith(context) and len(text) > len(context) and lm.tokenizer.encode(text) == tokens + [token]:
            found.append((token, text[len(context):]))
    return found


def test_greedy_continuations_count_as_correct(tiny_mixtral_path, tmp_path):
    """Hand-checked greedy items: one continuation token is made the model's argmax after the
    context (its LM-head row = the argmax's row plus the final hidden state), another is not."""
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=4, max_seq_len=64)  # its own copy: weights change
    context = "The quick brown fox"
    (greedy_token, greedy), (_, other) = clean_tokens(lm, context)[:2]
    with torch.no_grad():
        out = lm.model(torch.tensor([lm.tokenizer.encode(context)]), output_hidden_states=True)
        hidden = out.hidden_states[-1][0, -1]
        head = lm.model.lm_head.weight
        head[greedy_token] = head[out.logits[0, -1].argmax()] + hidden / hidden.norm()
        assert lm.model(torch.tensor([lm.tokenizer.encode(context)])).logits[0, -1].argmax() == greedy_token
    rows = [{"context": context, "continuation": greedy}, {"context": context, "continuation": other}]
    path = write_jsonl(tmp_path / "greedy.jsonl", rows)
    cfg = dict(abbr="greedy", reader_cfg=dict(type="jsonl", path=path),
               infer_cfg=dict(prompt_template=dict(template="{context}"),
                              inferencer=dict(type="PPLInferencer", continuations="continuation")),
               eval_cfg=dict(evaluator=dict(type="LoglikelihoodEvaluator")))
    task = EvalTask(cfg)
    predictions = task.infer(lm)
    assert [predictions[str(k)]["prediction"]["is_greedy"] for k in range(2)] == [True, False]
    assert task.evaluate(predictions)["accuracy"] == 50.0


def test_acc_norm_divides_by_the_choice_without_the_delimiter():
    """lm-eval: acc_norm = argmax(ll / len(choice)) with the continuation ' ' + choice scored."""
    inferencer = PPLInferencer(continuations="choices", choice_template=" {choice}")
    choices = [Choice(0, "Q:", " a"), Choice(1, "Q:", " bbb")]
    scores = [Score(-1.0, 1, False), Score(-2.1, 1, False)]
    record = inferencer.record(choices, scores)
    # by hand: -1.0 / 1 = -1.0 < -2.1 / 3 = -0.7, so label 1; with the space counted, -0.5 > -0.525: label 0
    assert record["prediction_norm"] == 1
    assert [record["label_scores"][k]["num_chars"] for k in ("0", "1")] == [1, 3]
    # COPA: two leading spaces (delimiter + the space its choices carry); one of them is the delimiter
    copa = inferencer.record([Choice(0, "x because", "  he left."), Choice(1, "x because", "  ok")],
                             [Score(-3.0, 3, False), Score(-2.0, 1, False)])
    assert [copa["label_scores"][k]["num_chars"] for k in ("0", "1")] == [len(" he left."), len(" ok")]


def test_a_dataset_without_references_is_refused_for_a_reference_evaluator(tmp_path):
    from harness.errors import HarnessError

    path = write_jsonl(tmp_path / "lambada.jsonl", [{"text": t} for t in LAMBADA_TEXTS])
    cfg = dict(abbr="lambada", reader_cfg=dict(type="jsonl", path=path, row_transforms=["lm_eval_lambada"]),
               infer_cfg=dict(prompt_template=dict(template="{context}"),
                              inferencer=dict(type="PPLInferencer", continuations="continuation")),
               eval_cfg=dict(evaluator=dict(type="AccEvaluator")))
    with pytest.raises(HarnessError, match="AccEvaluator compares predictions with references, but reader_cfg "
                                           "has no output_column"):
        EvalTask(cfg)
