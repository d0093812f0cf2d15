"""Cross-item packing: several items per row up to a token budget per batch.

Every check compares against plain forwards of each sequence alone (``direct_scores``), so the
packed layout, its mask and the read positions are tested against an independent computation."""
import logging
import random

import pytest
import torch

from harness.errors import HarnessError
from harness.models.collator import choose_width, plan_rows
from harness.models.hf_causal_lm import HFCausalLM, ScoreRequest
from harness.models.packed_scoring import Unit, pack
from tests.test_apply import ARCHS, build_model
from tests.test_scoring import direct_scores, random_groups


@pytest.fixture(scope="module")
def tokenizer(tiny_mixtral_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_mixtral_path)


def expected_scores(model, groups):
    return [[sum(lp for lp, _ in direct_scores(model, r.tokens)[r.score_from - 1 :]) for r in g] for g in groups]


def forward_shapes(lm, groups):
    """(rows, width) of every forward while ``lm`` scores ``groups``, and the scores."""
    shapes = []
    hook = lm.model.get_input_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    try:
        return shapes, lm.score(groups)
    finally:
        hook.remove()


def test_layout_of_two_items_in_one_row():
    first = Unit([1, 2], [ScoreRequest([1, 2, 3, 4], 2), ScoreRequest([1, 2, 5], 2)])
    second = Unit([7, 8, 9], [ScoreRequest([7, 8, 9, 10], 3)])
    batch = pack([[first, second]], pad_token_id=0)
    # first: context 1 2, continuation [3] (4 is only a target), continuation [] (5 is only a target)
    assert batch.input_ids.tolist() == [[1, 2, 3, 7, 8, 9]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 2]]  # positions restart per item
    allowed = batch.allowed[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],  # the second item sees nothing of the first
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
    ]
    # reads (kept rows): first request t=1..3 -> positions 0 (unused), 1, 2; second t=1,2 -> 0, 1
    assert batch.keep.tolist() == [[False, True, True, False, False, True]]
    assert batch.reads == [[-1, 0, 1], [-1, 0], [-1, -1, 2]]


def test_varlen_layout_repeats_the_context_and_needs_no_mask():
    unit = Unit([1, 2], [ScoreRequest([1, 2, 3, 4], 2), ScoreRequest([1, 2, 5], 2)])
    batch = pack([[unit]], pad_token_id=0, layout="varlen")
    assert batch.input_ids.tolist() == [[1, 2, 3, 1, 2]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.attention_mask("flash_attention_2", torch.float32) is None


def test_rows_are_filled_best_fit_and_never_overflow():
    rng = random.Random(0)
    lengths = [rng.randrange(5, 60) for _ in range(200)]
    rows = plan_rows(range(len(lengths)), lengths, 120)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 120 for row in rows)
    padding = sum(120 - sum(lengths[i] for i in row) for row in rows[:-1])
    assert padding < 0.05 * sum(lengths)
    assert choose_width(lengths, 1000, 0.0) >= 59 and choose_width([10, 10], 5000, 0.0) <= 20


@pytest.mark.parametrize("arch", ARCHS)
def test_cross_packed_scores_equal_separate_sequences_for_every_moe_family(arch, tokenizer):
    model = build_model(arch)
    groups = random_groups(1, num_groups=6)
    lm = HFCausalLM(arch, model=model, tokenizer=tokenizer, batch_size=4, max_seq_len=64, pad_token_id=3,
                    max_batch_tokens=96)
    shapes, scores = forward_shapes(lm, groups)
    total = sum(len(g) for g in groups)
    assert len(shapes) < total  # several items shared rows and forwards
    for group_scores, expected in zip(scores, expected_scores(model, groups)):
        assert [s.logprob for s in group_scores] == pytest.approx(expected, abs=1e-5)


def test_varlen_layout_scores_equal_separate_sequences(tiny_mixtral_path):
    """The flash-attention layout (sequences told apart by positions only), run here through
    sdpa, which builds the same block-diagonal mask from packed position ids."""
    from harness.models.hf_causal_lm import _scores_of

    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=4, max_seq_len=64)
    groups = random_groups(2, num_groups=6)
    units = _units(groups)
    logprobs, greedy = lm._score_packed([units[: len(units) // 2], units[len(units) // 2 :]], "varlen")
    scores = _scores_of(units, iter(zip(logprobs, greedy)))
    expected = [s for g in expected_scores(lm.model, groups) for s in g]
    assert [s.logprob for s in scores] == pytest.approx(expected, abs=1e-5)


def _units(groups):
    from harness.models.hf_causal_lm import _group_units

    return [u for g in groups for u in _group_units(g)]


def test_predictions_do_not_depend_on_the_token_budget(tiny_mixtral_path):
    groups = random_groups(4, num_groups=10)
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=3, max_seq_len=64)
    expected = expected_scores(lm.model, groups)
    predictions = []
    for budget in (None, 30, 64, 200, 5000):
        lm.max_batch_tokens = budget
        scores = lm.score(groups)
        predictions.append([max(range(len(g)), key=lambda k: g[k].logprob) for g in scores])
        assert [s.logprob for g in scores for s in g] == pytest.approx([e for g in expected for e in g], abs=1e-5)
    assert all(p == predictions[0] for p in predictions)


def test_an_items_scores_do_not_change_with_its_row_neighbours(tiny_mixtral_path, monkeypatch):
    from harness.models import collator

    monkeypatch.setattr(collator, "choose_width", lambda lengths, budget, cost: budget)  # one row per batch
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=3, max_seq_len=64, max_batch_tokens=4000)
    probe = [ScoreRequest([1, 40, 41, 42, 43, 50 + k, 60 + k], 5) for k in range(3)]
    alone = [s.logprob for s in lm.score([probe])[0]]
    for seed in range(3):
        neighbours = random_groups(10 + seed, num_groups=5)
        shapes, scores = forward_shapes(lm, neighbours + [probe])
        assert len(shapes) == 1 and shapes[0][0] == 1  # all in one row: the probe had neighbours
        assert [s.logprob for s in scores[-1]] == pytest.approx(alone, abs=1e-6)


def test_padding_stays_below_five_percent_of_forward_tokens(tiny_mixtral_path):
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=8, max_seq_len=64)
    groups = random_groups(5, num_groups=60)
    shapes, _ = forward_shapes(lm, groups)
    fed = sum(rows * width for rows, width in shapes)
    real = sum(len(g[0].tokens[: _prefix(g)]) + sum(len(r.tokens) - 1 - _prefix(g) for r in g)
               if _prefix(g) else sum(len(r.tokens) - 1 for r in g) for g in groups)
    assert real <= fed and (fed - real) / fed < 0.05


def _prefix(group):
    from harness.models.hf_causal_lm import _shared_prefix_len

    return _shared_prefix_len([r.tokens for r in group])


def test_a_budget_below_the_longest_item_runs_it_alone_with_a_warning(tiny_mixtral_path, caplog):
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=3, max_seq_len=64, max_batch_tokens=10)
    groups = [[ScoreRequest([1] + list(range(10, 30)), 5)], [ScoreRequest([1, 5, 6], 1)], [ScoreRequest([1, 7, 8], 1)]]
    with caplog.at_level(logging.WARNING):
        shapes, scores = forward_shapes(lm, groups)
    assert "exceed max_batch_tokens=10" in caplog.text
    assert shapes[0] == (1, 20)  # the long item, alone and whole (no truncation)
    for group_scores, expected in zip(scores, expected_scores(lm.model, groups)):
        assert [s.logprob for s in group_scores] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("budget", [0, -5, 2.5, "many"])
def test_a_token_budget_that_is_not_positive_is_a_one_line_error(tiny_mixtral_path, budget):
    with pytest.raises(HarnessError, match="max_batch_tokens must be a positive integer") as error:
        HFCausalLM(str(tiny_mixtral_path), max_seq_len=64, max_batch_tokens=budget)
    assert "\n" not in str(error.value)


def test_rolling_windows_are_packed_too(tiny_mixtral_path):
    from harness.models.api import RollingRequest, rolling_windows

    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=4, max_seq_len=16, max_batch_tokens=64)
    texts = [list(range(10, 10 + n)) for n in (40, 7, 23)]
    scores = lm.score_rolling([RollingRequest(t) for t in texts])
    for text, score in zip(texts, scores):
        windows = rolling_windows(text, 16, lm.prefix_token_id)
        expected = sum(sum(lp for lp, _ in direct_scores(lm.model, w.tokens)[w.score_from - 1 :]) for w in windows)
        assert score.num_tokens == len(text) and score.logprob == pytest.approx(expected, abs=1e-5)
