"""Evaluators against hand-computed scores, the protocol's documented quirks, and real SQuAD/DROP golds."""
from __future__ import annotations

import gzip
import itertools
import json
import random
import zipfile

import pytest

from harness.errors import HarnessError
from harness.registry import EVALUATORS, build

ALL_EVALUATORS = [
    "AccEvaluator",
    "EMEvaluator",
    "EEPEMEvaluator",
    "SQuADEvaluator",
    "SQuAD20Evaluator",
    "EEPSQuAD20Evaluator",
    "DropEvaluator",
    "Gsm8kEvaluator",
    "RougeEvaluator",
]


def score(name, predictions, references, **cfg):
    return build(EVALUATORS, dict(type=name, **cfg)).score(predictions, references)


@pytest.mark.parametrize("name", ALL_EVALUATORS)
def test_length_mismatch_names_both_lengths(name):
    with pytest.raises(HarnessError, match=r"3 predictions but 2 references"):
        score(name, ["a", "b", "c"], [["a"], ["b"]])


@pytest.mark.parametrize("name", ALL_EVALUATORS)
def test_empty_input_is_refused(name):
    with pytest.raises(HarnessError, match="no predictions"):
        score(name, [], [])


def test_accuracy_compares_strings():
    result = score("AccEvaluator", ["A", "B", "A", 1, "a"], ["A", "A", "A", "1", "A"])
    assert result == {"accuracy": pytest.approx(60.0)}


def test_gsm8k_accuracy_compares_numbers():
    predictions = ["18", "18.0", "NULL", "3.0000001", "3.001", "1000", "-7"]
    references = ["18", "18", "5", "3", "3", "1,000", "-7"]
    # right: 18, 18.0 (float), 3.0000001 (< 1e-6 off), -7; wrong: NULL, 3.001, '1,000' (not a float)
    assert score("Gsm8kEvaluator", predictions, references) == {"accuracy": pytest.approx(400 / 7)}


def test_em_uses_squad_normalisation_and_any_gold():
    predictions = ["The Eiffel Tower!", "Paris", "", "U.S.", "a  Broncos", "Denver"]
    references = [["eiffel tower"], ["London", "paris"], ["x"], "US", "broncos", ["Denver Broncos"]]
    # right: 1 (case, punctuation, article), 2 (second gold), 4 (periods), 5 (article + spaces)
    assert score("EMEvaluator", predictions, references) == {"em": pytest.approx(400 / 6)}


@pytest.mark.parametrize(
    "prediction, answers, right",
    [
        ("14.2", ["14.8"], True),  # both cut to '14' by general_postprocess (protocol quirk)
        ("140", ["14"], True),  # substring
        ("So the answer is 7", ["7"], True),
        ("paris", ["Paris"], False),  # case-sensitive
        ("London", ["the"], True),  # 'the' cleans to '' which is in every prediction
        ("Denver Broncos", ["Broncos", "Carolina Panthers"], True),
        ("4", ["14"], False),
        ("Broncos, then Panthers", ["Panthers"], False),  # the prediction is cut at the comma
    ],
)
def test_eep_em_substring_rule(prediction, answers, right):
    assert score("EEPEMEvaluator", [prediction], [answers]) == {"score": 100.0 * right}


def test_eep_em_averages_items():
    assert score("EEPEMEvaluator", ["14.2", "paris", "7"], [["14.8"], ["Paris"], "7"]) == {
        "score": pytest.approx(200 / 3)
    }


def test_squad_v1_hand_computed():
    # 'the cat sat on the mat' -> 'cat sat on mat' vs 'cat on mat': P=3/4, R=1, F1=6/7
    result = score("SQuADEvaluator", ["the cat sat on the mat"], [["cat on mat"]])
    assert result == {"em": 0.0, "f1": pytest.approx(100 * 6 / 7)}
    # best gold per metric: 'cat on mat' is an exact match for the second gold
    result = score("SQuADEvaluator", ["The cat, on a mat."], [["dog", "cat on mat"]])
    assert result == {"em": 100.0, "f1": pytest.approx(100.0)}


@pytest.mark.parametrize(
    "prediction, gold, em, f1",
    [
        ("Café", "café", 1, 1),  # lowercasing is unicode-aware
        ("“Paris”", "Paris", 0, 0),  # the official script drops ASCII punctuation only
        ("the", "an", 1, 0),  # v1.1: both empty -> EM 1 but F1 0
        ("", "Paris", 0, 0),
        ("Paris Paris", "Paris", 0, 2 * 0.5 * 1 / 1.5),  # repeated tokens count (multiset overlap)
        ("2.0", "2", 0, 0),  # no number normalisation in SQuAD
    ],
)
def test_squad_v1_edge_cases(prediction, gold, em, f1):
    result = score("SQuADEvaluator", [prediction], [[gold]])
    assert result == {"em": 100.0 * em, "f1": pytest.approx(100.0 * f1)}


def test_squad_v1_needs_a_gold():
    with pytest.raises(HarnessError, match="SQuAD20Evaluator"):
        score("SQuADEvaluator", ["x"], [[]])


def _squad_dev_questions(shared_dir, limit):
    with zipfile.ZipFile(shared_dir / "data" / "squad" / "dev-v1.1.json.zip") as archive:
        data = json.loads(archive.read("dev-v1.1.json"))
    questions = [
        [answer["text"] for answer in qa["answers"]]
        for article in data["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    return questions[:limit]


def test_squad_real_golds_score_100_against_themselves(shared_dir):
    golds = _squad_dev_questions(shared_dir, 300)
    for pick in (0, -1):
        predictions = [answers[pick] for answers in golds]
        assert score("SQuADEvaluator", predictions, golds) == {"em": 100.0, "f1": 100.0}
    assert score("EMEvaluator", [a[0] for a in golds], golds) == {"em": 100.0}
    squad2 = score("SQuAD20Evaluator", [a[0] for a in golds], golds)
    assert squad2 == {"em": 100.0, "f1": 100.0, "HasAns_em": 100.0, "HasAns_f1": 100.0}
    # another question's answer is (almost always) wrong
    shifted = score("SQuADEvaluator", [a[0] for a in golds[1:]], golds[:-1])
    assert shifted["em"] < 20 and shifted["f1"] < 30


def test_squad_real_f1_matches_a_direct_computation(shared_dir):
    """F1 of the first gold against the others, computed here from the v1.1 definition."""
    import re
    import string
    from collections import Counter

    def tokens(text):
        text = "".join(c for c in text.lower() if c not in set(string.punctuation))
        return re.sub(r"\b(a|an|the)\b", " ", text).split()

    def f1(pred, gold):
        same = sum((Counter(tokens(pred)) & Counter(tokens(gold))).values())
        if same == 0:
            return 0.0
        p, r = same / len(tokens(pred)), same / len(tokens(gold))
        return 2 * p * r / (p + r)

    items = [a for a in _squad_dev_questions(shared_dir, 400) if len(set(a)) > 1][:100]
    predictions = [answers[0] for answers in items]
    others = [answers[1:] for answers in items]
    expected = 100 * sum(max(f1(p, g) for g in gs) for p, gs in zip(predictions, others)) / len(items)
    result = score("SQuADEvaluator", predictions, others)
    assert result["f1"] == pytest.approx(expected)
    assert 0 < result["em"] < 100


def test_squad20_answerable_and_unanswerable():
    predictions = ["Denver Broncos", "", "", "something", "the Panthers"]
    references = [["Denver Broncos"], ["Paris"], [], "", ["Carolina Panthers", "Panthers"]]
    # HasAns: 1, 0, 1 (EM); F1 1, 0, 1.  NoAns: '' vs [] right, 'something' vs '' wrong.
    result = score("SQuAD20Evaluator", predictions, references)
    assert result == pytest.approx(
        {
            "em": 60.0,
            "f1": 60.0,
            "HasAns_em": 200 / 3,
            "HasAns_f1": 200 / 3,
            "NoAns_em": 50.0,
            "NoAns_f1": 50.0,
        }
    )


def test_squad20_partial_credit_and_missing_group():
    # 'the cat sat' vs 'cat': P=1/2, R=1 -> 2/3; only answerable items, so no NoAns keys
    result = score("SQuAD20Evaluator", ["the cat sat"], [["cat"]])
    assert result == pytest.approx({"em": 0.0, "f1": 200 / 3, "HasAns_em": 0.0, "HasAns_f1": 200 / 3})
    # only unanswerable items: no HasAns keys; an article-only prediction normalises to ''
    result = score("SQuAD20Evaluator", ["The.", "no"], [[], [""]])
    assert result == {"em": 50.0, "f1": 50.0, "NoAns_em": 50.0, "NoAns_f1": 50.0}


@pytest.mark.parametrize(
    "prediction, answers, right",
    [
        ("Paris, France", ["Paris, France"], False),  # prediction cut to 'paris', gold 'paris france'
        ("The answer is Denver Broncos.", ["Denver Broncos"], True),
        ("I think the answer is the Broncos", ["Broncos", "Denver Broncos"], True),
        ("Impossible to answer.", ["Plausible thing", "impossible to answer"], True),
        ("14.8", ["14.8"], False),  # prediction '14', gold '148'
        ("first line\nDenver", ["Denver"], False),  # only the first line counts
        ("U.S. Army", ["US Army"], False),  # prediction cut at the first '.' to 'u'
        ("The US Army, clearly", ["U.S. Army"], True),
    ],
)
def test_eep_squad20_quirks(prediction, answers, right):
    assert score("EEPSQuAD20Evaluator", [prediction], [answers]) == {"score": 100.0 * right}


# --- DROP -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, golds, em, f1",
    [
        ("2.0", ["2"], 1, 1),  # numbers compared through float
        ("1,000", ["1000"], 1, 1),  # punctuation inside a non-float token is removed first
        ("the Broncos.", ["Broncos"], 1, 1),
        ("state-of-the-art", ["state of art"], 1, 1),  # hyphens split tokens
        ("3 yards", ["4 yards"], 0, 0),  # numbers differ -> F1 0 (SQuAD F1 would give 0.5)
        ("4 yards", ["4"], 0, 0.67),  # P 1/2, R 1 -> 2/3, rounded
        ("Paris", ["London", "paris"], 1, 1),  # max over golds
        ("x", ["x y z w v u"], 0, 0.29),  # per-item F1 rounded to 2 places: 2/7 -> 0.29
        ("", ["Paris"], 0, 0),
        ("", [""], 0, 0),  # blank golds are skipped, so nothing can match
        ("Café", ["café"], 1, 1),
    ],
)
def test_drop_single_span(prediction, golds, em, f1):
    result = score("DropEvaluator", [prediction], [golds])
    assert result == pytest.approx({"em": 100.0 * em, "f1": 100.0 * f1})


def test_drop_multi_span_bags_are_aligned():
    # gold bags {bob, jones}, {alice}; predicted {alice, smith}, {bob}: the optimal pairing gives
    # each gold span F1 2/3 (one shared token of two), mean 0.67 after rounding
    result = score("DropEvaluator", [["Alice Smith", "Bob"]], [[["Bob Jones", "Alice"]]])
    assert result == pytest.approx({"em": 0.0, "f1": 67.0})
    # order does not matter for EM
    assert score("DropEvaluator", [["Bob", "Alice"]], [[["Alice", "Bob"]]]) == {"em": 100.0, "f1": 100.0}
    # an extra predicted span counts as an unmatched slot: (1 + 1 + 0) / 3
    result = score("DropEvaluator", [["Alice", "Bob", "Carol"]], [[["Alice", "Bob"]]])
    assert result == pytest.approx({"em": 0.0, "f1": 67.0})
    # one predicted string against a two-span gold: only one gold span can be paired, F1 1/2 of
    # {alice, and, bob} vs {alice}; the other gold span gets 0 -> 0.25
    result = score("DropEvaluator", ["Alice and Bob"], [[["Alice", "Bob"]]])
    assert result == pytest.approx({"em": 0.0, "f1": 25.0})


def _brute_force_alignment(predicted, gold, pair_f1):
    """Mean per-slot F1 of the best one-to-one pairing, by trying every permutation."""
    size = max(len(predicted), len(gold))
    best = 0.0
    for order in itertools.permutations(range(size)):
        total = sum(
            pair_f1(predicted[p], gold[g]) for g, p in enumerate(order) if g < len(gold) and p < len(predicted)
        )
        best = max(best, total / size)
    return best


def test_drop_alignment_matches_brute_force():
    from harness.openicl.evaluators.drop import aligned_f1s

    def pair_f1(pred, gold):
        gold_numbers = {t for t in gold if t.replace(".", "", 1).isdigit()}
        if gold_numbers and not gold_numbers & pred:
            return 0.0
        overlap = len(pred & gold)
        if overlap == 0:
            return 0.0
        p, r = overlap / len(pred), overlap / len(gold)
        return 2 * p * r / (p + r)

    rng = random.Random(0)
    vocabulary = ["a1", "b2", "c3", "d4", "e5", "1.0", "2.0"]
    for _ in range(200):
        predicted = [set(rng.sample(vocabulary, rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
        gold = [set(rng.sample(vocabulary, rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
        expected = _brute_force_alignment(predicted, gold, pair_f1)
        assert aligned_f1s(predicted, gold).mean() == pytest.approx(expected)


def _drop_dev_golds(shared_dir, limit):
    path = shared_dir / "data" / "drop" / "drop_v0_dev.jsonl.gz"
    with gzip.open(path, "rt") as handle:
        rows = [json.loads(line) for line in itertools.islice(handle, limit)]
    return [row["ref_text"].split("|") for row in rows]


def test_drop_real_golds_score_100_against_themselves(shared_dir):
    golds = _drop_dev_golds(shared_dir, 400)
    assert any(len(answers) > 1 for answers in golds)
    for pick in (0, -1):
        predictions = [answers[pick] for answers in golds]
        assert score("DropEvaluator", predictions, golds) == {"em": 100.0, "f1": 100.0}
    # numeric golds still match when written as floats
    numeric = [answers for answers in golds if answers[0].strip().isdigit()][:50]
    assert len(numeric) > 10
    as_floats = [f"{float(answers[0]):.1f}" for answers in numeric]
    assert score("DropEvaluator", as_floats, numeric) == {"em": 100.0, "f1": 100.0}
    # an off-by-one number is wrong by both measures against its single gold (number-mismatch rule)
    off_by_one = [str(int(answers[0]) + 1) for answers in numeric]
    single_gold = [[answers[0]] for answers in numeric]
    assert score("DropEvaluator", off_by_one, single_gold) == {"em": 0.0, "f1": 0.0}


# --- ROUGE ------------------------------------------------------------------------------------


def test_rouge_hand_computed():
    # unigrams: 3 of 3 predicted in 4 gold -> F 6/7; bigrams: 2 of 2 in 3 -> F 4/5; LCS 3 -> F 6/7
    result = score("RougeEvaluator", ["the cat sat"], ["the cat sat down"])
    assert result == pytest.approx({"rouge1": 600 / 7, "rouge2": 80.0, "rougeL": 600 / 7})


def test_rouge_stemming_and_empty_prediction():
    assert score("RougeEvaluator", ["cats running"], ["cat runs"]) == pytest.approx(
        {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    )
    unstemmed = score("RougeEvaluator", ["cats running"], ["cat runs"], use_stemmer=False)
    assert unstemmed["rouge1"] == 0.0
    assert score("RougeEvaluator", ["", "same text"], ["gold", "same text"]) == pytest.approx(
        {"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0}
    )


# ---------------------------------------------------------------------------------- log-likelihood tasks
def test_loglikelihood_evaluator_greedy_accuracy_and_perplexity_by_hand():
    import math

    predictions = [{"loglikelihood": -0.5, "is_greedy": True, "num_tokens": 1},
                   {"loglikelihood": -2.0, "is_greedy": False, "num_tokens": 2},
                   {"loglikelihood": -3.5, "is_greedy": True, "num_tokens": 3},
                   {"loglikelihood": -6.0, "is_greedy": False, "num_tokens": 1}]
    result = score("LoglikelihoodEvaluator", predictions, [None] * 4)
    assert result["accuracy"] == pytest.approx(50.0)
    # lm-eval's perplexity aggregation: exp(-mean of the per-item log-likelihoods) = exp(12 / 4)
    assert result["perplexity"] == pytest.approx(math.exp(3.0))


def test_loglikelihood_evaluator_refuses_ranked_predictions():
    with pytest.raises(HarnessError, match="item 0 is not a single-continuation score"):
        score("LoglikelihoodEvaluator", ["A", "B"], ["A", "B"])


def test_reference_evaluators_say_they_need_references():
    for name in ("AccEvaluator", "Gsm8kEvaluator", "EMEvaluator", "EEPEMEvaluator", "SQuADEvaluator",
                 "SQuAD20Evaluator", "EEPSQuAD20Evaluator", "DropEvaluator", "RougeEvaluator"):
        assert build(EVALUATORS, {"type": name}).needs_references, name
    assert not build(EVALUATORS, {"type": "LoglikelihoodEvaluator"}).needs_references
