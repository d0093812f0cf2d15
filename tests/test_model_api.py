"""The model API's seams: the collator, rolling windows, a second backend, identity from the plan."""
from __future__ import annotations

import json
import random

import pytest
import torch

from harness.models.api import GenerationRequest, LanguageModel, RollingRequest, Score, ScoreRequest, rolling_windows
from harness.models.collator import Collator
from harness.models.hf_causal_lm import HFCausalLM
from harness.pipeline import EvalTask
from tests.test_scoring import direct_logprobs


@pytest.fixture(scope="module")
def lm(tiny_mixtral_path):
    return HFCausalLM(str(tiny_mixtral_path), batch_size=3, max_seq_len=16)


# ---------------------------------------------------------------------------------------------- collator
def test_collator_runs_longest_first_and_restores_order():
    seen = []
    collator = Collator(2)
    items = ["bb", "a", "dddd", "ccc", "e"]
    out = collator.run(items, [len(i) for i in items], lambda batch: seen.append(batch) or [i.upper() for i in batch])
    assert out == ["BB", "A", "DDDD", "CCC", "E"]
    assert seen == [["dddd", "ccc"], ["bb", "a"], ["e"]]


def test_collator_halves_on_out_of_memory_and_remembers_the_size_that_fit():
    sizes = []

    def run(batch):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("simulated")
        return batch

    collator = Collator(8)
    items = list(range(10))
    done = []
    assert collator.run(items, [1] * 10, run, on_batch=lambda pos, res: done.extend(pos)) == items
    assert sizes[:3] == [8, 4, 2] and collator.current() == 2 and sorted(done) == items
    sizes.clear()
    collator.run(items, [1] * 10, run)  # a later call starts from what fit
    assert set(sizes) == {2}


def test_collator_batches_only_requests_with_equal_settings():
    collator = Collator(4)
    items = [("x", 1), ("y", 2), ("z", 1), ("w", 2)]
    batches = []
    collator.run(items, [1, 1, 1, 1], lambda b: batches.append(b) or b, same_batch=lambda item: item[1])
    assert sorted(sorted(b) for b in batches) == [[("w", 2), ("y", 2)], [("x", 1), ("z", 1)]]


def test_batch_size_below_one_is_refused():
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="batch_size must be at least 1"):
        Collator(0)


# ---------------------------------------------------------------------------------------------- rolling
def test_rolling_windows_score_every_token_once_by_hand():
    # prefix 0; tokens 1..7; windows of 4: [0,1,2,3] scores 1,2,3; then [3,4,5,6] scores 4,5,6; then 7
    windows = rolling_windows([1, 2, 3, 4, 5, 6, 7], max_len=4, prefix_token=0)
    assert windows == [ScoreRequest([0, 1, 2, 3], 1), ScoreRequest([3, 4, 5, 6], 1), ScoreRequest([4, 5, 6, 7], 3)]
    # stride 1: every later token gets the longest context a window allows
    strided = rolling_windows([1, 2, 3, 4, 5], max_len=3, prefix_token=0, stride=1)
    assert strided == [ScoreRequest([0, 1, 2], 1), ScoreRequest([1, 2, 3], 2), ScoreRequest([2, 3, 4], 2),
                       ScoreRequest([3, 4, 5], 2)]


@pytest.mark.parametrize("length,stride", [(40, None), (40, 5), (9, None)])
def test_rolling_windows_cover_each_position_once_with_bounded_context(length, stride):
    tokens = list(range(100, 100 + length))
    scored = []
    for w in rolling_windows(tokens, max_len=8, prefix_token=0, stride=stride):
        assert 1 <= w.score_from < len(w.tokens) <= 8
        scored += w.tokens[w.score_from:]
    assert scored == tokens


def test_score_rolling_equals_a_direct_computation(lm):
    rng = random.Random(0)
    texts = [[rng.randrange(4, 300) for _ in range(n)] for n in (5, 30, 14)]
    scores = lm.score_rolling([RollingRequest(t) for t in texts])
    for tokens, score in zip(texts, scores):
        # direct: windows of 16 with disjoint scored spans (lm-eval), each a plain forward
        sequence, expected, scored = [lm.prefix_token_id] + tokens, 0.0, 1
        while scored < len(sequence):
            end = min(len(sequence), scored + 15)
            start = max(0, end - 16)
            window = sequence[start:end]
            expected += sum(direct_logprobs(lm.model, window)[scored - start - 1:])
            scored = end
        assert score.num_tokens == len(tokens)
        assert score.logprob == pytest.approx(expected, abs=1e-4)


def test_score_rolling_reports_each_text_once_when_all_its_windows_are_done(lm):
    texts = [list(range(4, 4 + n)) for n in (40, 3, 20)]
    heard = {}
    out = lm.score_rolling([RollingRequest(t) for t in texts],
                           on_batch=lambda positions, scores: heard.update(zip(positions, scores)))
    assert sorted(heard) == [0, 1, 2] and [heard[i] for i in range(3)] == out


# ---------------------------------------------------------------------------------------------- protocol
def test_hf_causal_lm_implements_the_protocol(lm):
    assert isinstance(lm, LanguageModel)
    [text] = lm.generate([GenerationRequest(lm.encode_prompt("The quick", 3), 3)])
    assert text == lm.generate(["The quick"], max_out_len=3)[0]


class TableBackend:
    """A second backend in a few lines: answers from a table, no tokenizer, no torch model.

    It shows that inferencers need only the protocol of ``harness/models/api.py``."""

    abbr, meta_template, batch_size, max_seq_len, max_out_len, stop_strings = "table", None, 2, 64, 4, []
    identity = {"backend": "table"}
    prefix_token_id = 0

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.scored: list[list[int]] = []

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def encode_prompt(self, text: str, max_out_len=None) -> list[int]:
        return self.encode(text)

    def generate(self, requests, on_batch=None, batch_size=None):
        out = []
        for i, request in enumerate(requests):
            prompt = "".join(map(chr, request.tokens))
            out.append(next(a for q, a in self.answers.items() if q in prompt))
            if on_batch:
                on_batch([i], [out[-1]])
        return out

    def score(self, groups, on_batch=None, batch_size=None):
        out = []
        for i, group in enumerate(groups):
            # log-likelihood: minus the number of scored characters that are not 'y' (prefers " yes")
            scores = [Score(-float(sum(t != ord("y") for t in r.tokens[r.score_from:])), len(r.tokens) - r.score_from,
                            False) for r in group]
            self.scored.append([r.score_from for r in group])
            out.append(scores)
            if on_batch:
                on_batch([i], [scores])
        return out

    def score_rolling(self, requests, stride=None, on_batch=None, batch_size=None):
        raise NotImplementedError


def toy_task(tmp_path, inferencer: dict) -> EvalTask:
    rows = [{"question": f"q{i}?", "answer": "yes" if i % 2 else "no"} for i in range(4)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return EvalTask(dict(
        abbr="table_task",
        reader_cfg=dict(type="jsonl", path=str(tmp_path / "rows.jsonl"), input_columns=["question"],
                        output_column="answer"),
        infer_cfg=dict(prompt_template=dict(template="Q: {question} A:"), inferencer=inferencer),
    ))


def test_a_second_backend_runs_both_inferencers(tmp_path):
    backend = TableBackend({f"q{i}?": ("yes" if i % 2 else "no") for i in range(4)})
    gen = toy_task(tmp_path, dict(type="GenInferencer"))
    assert gen.run(backend, tmp_path / "work") == {"accuracy": 100.0}
    ppl = toy_task(tmp_path, dict(type="PPLInferencer", continuations={"yes": " yes", "no": " no"}))
    assert ppl.run(backend, tmp_path / "work") == {"accuracy": 50.0, "accuracy_norm": 50.0}
    details = json.loads((tmp_path / "work/predictions/table/table_task.details.json").read_text())
    assert [d["correct"] for d in details] == [False, True, False, True]  # always " yes": right on odd items


def test_string_per_label_templates_score_only_what_the_labels_differ_in(tmp_path):
    """A plain-string per-label template: the context is the labels' shared prefix, so
    loglikelihood mode scores the answer (as documented), not the whole prompt."""
    backend = TableBackend({})
    task = toy_task(tmp_path, dict(type="PPLInferencer"))
    task.template = type(task.template)(template={"yes": "Q: {question} A: yes", "no": "Q: {question} A: no"})
    [item, *_] = task.prompts(backend)
    assert [(c.context, c.continuation) for c in item] == [("Q: q0? A: ", "yes"), ("Q: q0? A: ", "no")]
    task.infer(backend)
    # the scored tokens start after the shared context (its trailing space moves to the answers, as lm-eval)
    assert backend.scored[0] == [len("Q: q0? A:")] * 2


def test_split_at_shared_prefix_backs_off_to_a_word():
    from harness.openicl.inferencers.ppl import split_at_shared_prefix

    assert split_at_shared_prefix(["A: yes", "A: yesterday"]) == ("A:", [" yes", " yesterday"])
    assert split_at_shared_prefix(["A: yep", "A: yes"]) == ("A:", [" yep", " yes"])
    assert split_at_shared_prefix(["yes", "no"]) == ("", ["yes", "no"])
    assert split_at_shared_prefix(["x\nyes", "x\nno"]) == ("x\n", ["yes", "no"])


# ---------------------------------------------------------------------------------------------- identity
def test_identity_follows_the_installed_plan_not_a_recorded_file(tmp_path, tiny_mixtral_path):
    """apply_plan without any bookkeeping call, then a rerun on the same work dir: the predictions
    are recomputed (not the uncompressed model's reused); after reset_plan they are reused again."""
    from harness.compress import apply_plan, reset_plan, snapshot_experts
    from harness.compress.plan import CompressionPlan
    from tests.test_search import REPO, toy_config
    from harness.config import dataset_configs, load_config

    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=4, max_seq_len=64)
    task = EvalTask(dataset_configs(load_config(toy_config(tmp_path)))[0], str(REPO / "data"))
    work = tmp_path / "work"
    task.run(lm, work)
    saved = work / "predictions" / lm.abbr / f"{task.abbr}.json"
    full_scores = [r["label_scores"] for r in json.loads(saved.read_text()).values()]
    uncompressed = lm.identity
    snapshot = snapshot_experts(lm.model)
    layers = len(lm.model.model.layers)
    plan = CompressionPlan.from_kept({i: [0, 1] for i in range(layers)}, 8, num_layers=layers)
    apply_plan(lm.model, plan)
    assert lm.identity != uncompressed and lm.identity["plan"] == plan.fingerprint()

    calls = []
    real = lm._score_batch
    lm._score_batch = lambda groups: calls.append(len(groups)) or real(groups)
    task.run(lm, work)
    assert calls, "the pruned model reused the uncompressed model's predictions"
    pruned_scores = [r["label_scores"] for r in json.loads(saved.read_text()).values()]
    assert pruned_scores != full_scores
    assert pruned_scores == [r["label_scores"] for r in task.infer(lm).values()]  # the pruned model's own
    reset_plan(lm.model, snapshot)
    assert lm.identity == uncompressed


def test_a_folder_rebuilt_in_place_does_not_reuse_the_old_weights_predictions(tmp_path):
    """Same path, new weights (a rebuilt model folder): the identity changes, so cached predictions
    and calibration statistics of the old weights are not served; the same files give the same identity."""
    from tests.tiny import build_tiny_model, build_tiny_tokenizer

    folder = tmp_path / "model"
    build_tiny_tokenizer(folder)
    build_tiny_model(folder, "mixtral", seed=0)
    first = HFCausalLM(str(folder), max_seq_len=64).identity
    assert HFCausalLM(str(folder), max_seq_len=64).identity == first
    build_tiny_model(folder, "mixtral", seed=1)
    second = HFCausalLM(str(folder), max_seq_len=64).identity
    assert second["path"] == first["path"] and second != first
