"""Post-processors against hand-checked cases and the EEP protocol's documented results."""
from __future__ import annotations

import json

import pytest

from harness.errors import HarnessError
from harness.registry import DATASET_POSTPROCESSORS, POSTPROCESSORS, get, get_function


def pp(name):
    return get(POSTPROCESSORS, name)


ONE_TEXT = "  The answer is B, 14.8 (Answer: 1,000 apples)\nQuestion: 7?"


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [  # worked out by hand from each docstring; every name gives a different result on the same text
        ("first_capital", {}, "T"),
        ("first_option", {"options": "ABCD"}, "B"),
        ("gsm8k", {}, "000"),  # last number before 'Question:'; the protocol's regex splits '1,000'
        ("ReCoRD", {}, "The answer is B, 14.8 (1,000 apples)"),
        ("general", {}, "answer is B"),  # cut at the first ',', punctuation and 'The' deleted
        ("squad", {}, "answer is B 148 Answer 1000 apples"),  # cut only at the newline
        ("strip", {}, ONE_TEXT.strip()),
        ("first_line", {}, "The answer is B, 14.8 (Answer: 1,000 apples)"),
        ("last_number", {}, "7"),
    ],
)
def test_each_registered_prediction_postprocessor_on_one_text(name, kwargs, expected):
    assert pp(name)(ONE_TEXT, **kwargs) == expected


def test_dataset_postprocessor_is_registered_separately():
    assert get(DATASET_POSTPROCESSORS, "gsm8k_dataset")("She pays 2 * 600 = 1,200.\n#### 1,200") == "1200"
    with pytest.raises(HarnessError, match="gsm8k_dataset"):
        get(POSTPROCESSORS, "gsm8k_dataset")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("Yes", "Y"),  # not limited to option letters: the protocol scores this wrong
        ("based on the passage, B", "B"),
        ("  no capitals here 123", ""),
        ("", ""),
        ("éÉtat", "É"),  # unicode upper case counts
    ],
)
def test_first_capital(text, expected):
    assert pp("first_capital")(text) == expected


# Every row of the results table in protocol_loaders.md section 5; 'any' expanded to each option set.
PROTOCOL_TABLE = [
    ("A", "any", "A"),
    ("A.", "any", "A"),
    ("B) No", "any", "B"),
    ("The answer is B.", "any", "B"),
    ("Yes", "AB", ""),
    ("Answer: C", "AB", "A"),
    ("Based on the passage, yes.", "AB", "B"),
    ("I think D", "AB", ""),
    ("I think D", "ABCD", "D"),
]


def _expand(rows):
    for text, options, expected in rows:
        for opts in (["AB", "ABC", "ABCD"] if options == "any" else [options]):
            yield text, opts, expected


@pytest.mark.parametrize("text, options, expected", list(_expand(PROTOCOL_TABLE)))
def test_first_option_reproduces_protocol_table(text, options, expected):
    assert pp("first_option")(text, options=options) == expected


def test_first_option_through_a_config_dict():
    fn = get_function(POSTPROCESSORS, dict(type="first_option", options="ABC"))
    assert fn("Answer: C") == "C"  # 'C' at the end after a space (pattern 21) wins before the cushion


@pytest.mark.parametrize(
    "text, options, expected",
    [
        # EEP addition: a leading option letter followed by a space / ':' / ',' / full-width mark wins
        ("B because the answer is A", "AB", "B"),
        ("B: the answer is A", "AB", "B"),
        ("B，the answer is A", "AB", "B"),
        # ... but not when followed by '.' or ')': the upstream order applies and pattern 30 wins
        ("B. the answer is A", "AB", "A"),
        ("B) the answer is A", "AB", "A"),
        # the cushion [options] picks up capitals inside words; off without the cushion
        ("Based on the passage, yes.", "AB", "B"),
        # a matching pattern without any option letter falls through ('1.\s?(.*?)$' matches here)
        ("1. none of them", "AB", ""),
        ("1. Bananas", "AB", "B"),
        # the fused pattern 8 needs both halves; its whole match is scanned in options order
        # (split into upstream's intended two patterns, '故A' alone would give 'A' for options 'BA')
        ("故A只有选项B是对", "AB", "A"),
        ("故A只有选项B是对", "BA", "B"),
        ("故选A只有选项B是对", "BA", "A"),  # pattern 7 (选A) matches first
        # with upstream's intended separate pattern '故选?\s?([AB])' this would be 'B'; fused, pattern 15 decides
        ("故B，因为A是正确的", "AB", "A"),
        ("答案是C", "ABCD", "C"),
        ("The correct answer is option (D)", "ABCD", "D"),
    ],
)
def test_first_option_rules(text, options, expected):
    assert pp("first_option")(text, options=options) == expected


def test_first_option_without_cushion():
    assert pp("first_option")("Based on the passage, yes.", options="AB", cushion=False) == ""
    assert pp("first_option")("The answer is B.", options="AB", cushion=False) == "B"


def test_first_option_pattern_list_shape():
    from harness.openicl.postprocessors import option_patterns

    plain = option_patterns("AB", "no leading letter")
    assert len(plain) == 43
    assert plain[8] == r"故选?\s?([AB])只有选?项?\s?([AB])\s?是?对"
    assert plain[-2:] == ["([AB]):", "[AB]"]
    with_eep = option_patterns("AB", "A because")
    assert len(with_eep) == 44 and with_eep[0] == r"([AB])[\s，：:,]"
    assert len(option_patterns("AB", "A because", cushion=False)) == 42


def test_first_option_needs_options():
    with pytest.raises(HarnessError, match="options"):
        pp("first_option")("A")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She makes 9 * 2 = 18 dollars.\nThe answer is 18", "18"),
        ("So the answer is 7.\n\nQuestion: how many? 42", "7"),  # made-up follow-up question ignored
        ("It fell by -3.5 degrees", "-3.5"),
        ("no digits", "NULL"),
        ("Question: 5", "NULL"),
        ("1,000 people", "000"),  # commas are not understood (protocol behaviour)
    ],
)
def test_gsm8k(text, expected):
    assert pp("gsm8k")(text) == expected


def test_gsm8k_dataset():
    fn = get(DATASET_POSTPROCESSORS, "gsm8k_dataset")
    assert fn("Work.\n#### 1,234") == "1234"
    with pytest.raises(HarnessError, match="####"):
        fn("no marker")


def test_gsm8k_dataset_on_real_answers(shared_dir):
    fn = get(DATASET_POSTPROCESSORS, "gsm8k_dataset")
    lines = (shared_dir / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()[:50]
    for line in lines:
        answer = json.loads(line)["answer"]
        last_line = answer.strip().splitlines()[-1]
        assert last_line.startswith("#### ")
        expected = last_line[len("#### "):].replace(",", "")
        assert fn(answer) == expected
        float(expected)  # every reference is a plain number
    assert fn(json.loads(lines[0])["answer"]) == "18"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  Answer: Barack Obama\nmore text", "Barack Obama"),
        ("\nParis", "Paris"),
        ("Answer: Answer: X ", "X"),
    ],
)
def test_record(text, expected):
    assert pp("ReCoRD")(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("14.8", "14"),
        ("-3", "3"),
        ("The Eiffel Tower, Paris", "Eiffel Tower"),
        ("An apple a day", "apple day"),
        ("Theatre then", "Theatre then"),  # only whole words are articles
        ("THE end", "end"),  # articles in any case
        ("A.", ""),
        ("Denver Broncos\nexplanation", "Denver Broncos"),
        ("  “Café”  ünïcode!! ", "Café ünïcode"),  # \w is unicode-aware; curly quotes are punctuation
        ("U.S. Army", "U"),
        ("", ""),
    ],
)
def test_general(text, expected):
    assert pp("general")(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("14.8", "148"),
        ("U.S. Army", "US Army"),
        ("Paris, France", "Paris France"),
        ("The answer is: the Broncos.\nsecond line", "answer is Broncos"),
    ],
)
def test_squad(text, expected):
    assert pp("squad")(text) == expected


def test_strip_and_first_line():
    assert pp("strip")("  Paris \n") == "Paris"
    assert pp("first_line")("\n\n  Paris \nLondon") == "Paris"
    assert pp("first_line")("") == ""


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The total is 1,000 and then 2,500.50 dollars.", "2500.50"),
        ("The answer is 18.", "18"),
        ("We owe -4", "-4"),
        ("1, 2, 3,", "3"),
        ("none", ""),
    ],
)
def test_last_number(text, expected):
    assert pp("last_number")(text) == expected
