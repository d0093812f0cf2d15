"""Prompt templates and meta-template rendering against hand-written expected strings."""
import pytest

from harness.errors import HarnessError
from harness.openicl.meta_template import render, split_rounds
from harness.openicl.prompt_template import PromptTemplate, fill_text, placeholders

MIXTRAL = dict(
    begin="<s>",
    round=[
        dict(role="HUMAN", begin="[INST]", end="[/INST]"),
        dict(role="BOT", begin="", end="</s>", generate=True),
    ],
)


def test_fill_is_plain_replacement_key_by_key():
    # str.format would fail on the lone brace and on {unknown}; replacement leaves them alone
    assert fill_text("{a} {b} {unknown} {", {"a": 1, "b": "x"}) == "1 x {unknown} {"
    # key order matters exactly as in OpenCompass's safe_format: a value containing a later key is filled too
    assert fill_text("{a}", {"a": "{b}", "b": "B"}) == "B"


def test_placeholders_of_all_template_kinds():
    assert placeholders("Q: {question} {passage}") == {"question", "passage"}
    rounds = dict(round=[dict(role="HUMAN", prompt="{q}"), dict(role="BOT", prompt="{a}")])
    assert placeholders(rounds) == {"q", "a"}
    assert placeholders({"A": "{x} yes", "B": "{y} no"}) == {"x", "y"}


def test_single_human_round_renders_like_the_protocol():
    template = PromptTemplate(dict(round=[dict(role="HUMAN", prompt="{passage}\nQuestion: {question}\nAnswer:")]))
    filled = template.render({"passage": "P", "question": "q?"})
    assert render(filled, MIXTRAL, "gen") == "<s>[INST]P\nQuestion: q?\nAnswer:[/INST]"


def test_bot_prompt_of_the_last_round_is_dropped_in_generation():
    # SQuAD's protocol template: HUMAN + BOT 'Answer:'; the BOT cue never reaches the model
    filled = [dict(role="HUMAN", prompt="ctx"), dict(role="BOT", prompt="Answer:")]
    assert render(filled, MIXTRAL, "gen") == "<s>[INST]ctx[/INST]"
    assert render(filled, MIXTRAL, "ppl") == "<s>[INST]ctx[/INST]Answer:</s>"


def test_multi_round_few_shot_chat():
    # GSM8K's protocol: H,B,H,B,H -> 3 [INST], 2 </s>
    turns = [
        dict(role="HUMAN", prompt="Q1"),
        dict(role="BOT", prompt="A1\n"),
        dict(role="HUMAN", prompt="Q2"),
        dict(role="BOT", prompt="A2\n"),
        dict(role="HUMAN", prompt="Q3"),
        dict(role="BOT", prompt=""),
    ]
    assert render(turns, MIXTRAL, "gen") == "<s>[INST]Q1[/INST]A1\n</s>[INST]Q2[/INST]A2\n</s>[INST]Q3[/INST]"


def test_round_without_bot_in_ppl_mode_renders_every_meta_role():
    assert render([dict(role="HUMAN", prompt="x")], MIXTRAL, "ppl") == "<s>[INST]x[/INST]</s>"


def test_plain_string_template_is_passed_unchanged():
    # DROP's protocol prompt is a plain string: no <s>, no [INST]
    assert render("Text: t\nAnswer:", MIXTRAL, "gen") == "Text: t\nAnswer:"


def test_without_meta_template_turns_join_with_newlines():
    turns = [dict(role="HUMAN", prompt="a"), dict(role="BOT", prompt="b")]
    assert render(turns, None, "gen") == "a\nb"


def test_rounds_split_when_a_role_repeats_or_goes_back():
    turns = [dict(role=r, prompt="") for r in ["HUMAN", "HUMAN", "BOT", "HUMAN", "BOT"]]
    rounds = split_rounds(turns, ["HUMAN", "BOT"])
    assert [[t["role"] for t in r] for r in rounds] == [["HUMAN"], ["HUMAN", "BOT"], ["HUMAN", "BOT"]]


def test_unknown_role_is_a_clear_error():
    with pytest.raises(HarnessError, match="SYSTEM"):
        render([dict(role="SYSTEM", prompt="s")], MIXTRAL, "gen")


def test_reserved_system_role_renders_in_place():
    meta = {**MIXTRAL, "reserved_roles": [dict(role="SYSTEM", begin="<<SYS>>", end="<</SYS>>")]}
    turns = [dict(role="SYSTEM", prompt="be brief"), dict(role="HUMAN", prompt="q")]
    assert render(turns, meta, "gen") == "<s><<SYS>>be brief<</SYS>>[INST]q[/INST]"


def test_string_few_shot_examples_replace_the_ice_token():
    template = PromptTemplate("</E>Q: {q}\nA:")
    ice = PromptTemplate("Q: {q}\nA: {a}\n")
    examples = [ice.render({"q": "1+1", "a": "2"}), ice.render({"q": "2+2", "a": "4"})]
    assert template.render({"q": "3+3", "a": ""}, examples) == "Q: 1+1\nA: 2\nQ: 2+2\nA: 4\nQ: 3+3\nA:"


def test_round_few_shot_examples_splice_as_turns():
    template = PromptTemplate(dict(round=["</E>", dict(role="HUMAN", prompt="{q}"), dict(role="BOT", prompt="")]))
    ice = PromptTemplate(dict(round=[dict(role="HUMAN", prompt="{q}"), dict(role="BOT", prompt="{a}")]))
    examples = [ice.render({"q": "Q1", "a": "A1"})]
    filled = template.render({"q": "Q2", "a": ""}, examples)
    assert render(filled, MIXTRAL, "gen") == "<s>[INST]Q1[/INST]A1</s>[INST]Q2[/INST]"


def test_template_field_not_in_columns_is_an_error():
    template = PromptTemplate("{question} {pasage}")
    with pytest.raises(HarnessError, match="pasage"):
        template.check_columns({"question", "passage"}, "dataset BoolQ")


def test_per_label_templates_know_their_labels():
    template = PromptTemplate({"A": "{q} yes", "B": "{q} no"})
    assert template.labels == ["A", "B"]
    assert template.render({"q": "sky blue?"}, label="B") == "sky blue? no"


def test_generate_begin_opens_only_the_answer_being_produced():
    meta = dict(round=[dict(role="HUMAN", begin="<u>", end="|"),
                       dict(role="BOT", begin="<a>", end="|", generate=True, generate_begin="<a><t/>")])
    shots = [dict(role="HUMAN", prompt="q1"), dict(role="BOT", prompt="a1"),
             dict(role="HUMAN", prompt="q2"), dict(role="BOT", prompt="a2")]
    # the history's answer keeps `begin`; the last round's answer opens with `generate_begin`
    assert render(shots, meta, "gen") == "<u>q1|<a>a1|<u>q2|<a><t/>"
    assert render(shots, meta, "ppl") == "<u>q1|<a>a1|<u>q2|<a><t/>a2|"
    # so a PPL prompt still starts with its generation prompt (the context / continuation split)
    assert render(shots, meta, "ppl").startswith(render(shots, meta, "gen"))
