"""Dataset loaders against raw reads of the real files in ../shared, hand-checked rows and the EEP
protocol's documented facts; formats absent from ../shared are checked on files written here in the
real format."""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import re
import zipfile

import pytest

from harness.errors import HarnessError
from harness.registry import LOADERS, get

BOOL_AB = dict(true="A", false="B")


def load(name, path, **kwargs):
    return get(LOADERS, name)(str(path), **kwargs)


def raw_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(shared_dir):
    return shared_dir / "data"


@pytest.fixture(scope="module")
def eep_data(shared_dir):
    return shared_dir / "eep" / "data"


ARC_ROW = {"id": "q1", "question": {"stem": "Which?", "choices": [{"text": t, "label": l} for t, l in
                                                                   zip("wxyz", "1234")]}, "answerKey": "3"}
OBQA_ROW = {"id": "o1", "question": {"stem": "Sun is a", "choices": [{"text": t, "label": l} for t, l in
                                                                     zip(["star", "moon", "rock", "car"], "ABCD")]},
            "answerKey": "A", "fact1": "the sun is a star"}
SQUAD = {"data": [{"title": "T", "paragraphs": [{"context": "C", "qas": [
    {"id": "s1", "question": "Q?", "answers": [{"text": "x", "answer_start": 0}]}]}]}]}
DROP = {"p1": {"passage": "P", "qa_pairs": [{"question": "How many?", "query_id": "d1",
                                             "validated_answers": [{"number": "3", "date": {}, "spans": []}]}]}}
RECORD_ROW = {"passage": {"text": "A @highlight B"}, "qas": [{"query": "@placeholder won", "idx": 0,
                                                              "answers": [{"text": "A"}]}]}

# one small file per format family, written in that format, and the row fields the loader must produce
FAMILY_CASES = {
    "superglue": ("r.jsonl", json.dumps({"question": "q", "label": True}) + "\n", dict(label_map=BOOL_AB),
                  {"question": "q", "label": "A"}),
    "record": ("r.jsonl", json.dumps(RECORD_ROW) + "\n", {}, {"text": "A  B", "question": "____ won", "answers": ["A"]}),
    "squad": ("s.json", json.dumps(SQUAD), {}, {"id": "s1", "context": "C", "answers": ["x"], "is_impossible": False}),
    "drop": ("d.json", json.dumps(DROP), {}, {"prompt": "P", "question": "How many?", "answers": ["3"]}),
    "winogrande": ("w.jsonl", json.dumps({"sentence": "I met _ today", "option1": "Ann", "option2": "Bo",
                                          "answer": "2"}) + "\n", {},
                   {"opt1": "I met Ann today", "opt2": "I met Bo today", "cont": " today", "answer": "B"}),
    "obqa": ("o.jsonl", json.dumps(OBQA_ROW) + "\n", {},
             {"question_stem": "Sun is a", "A": "star", "D": "car", "answerKey": "A", "fact1": "the sun is a star"}),
    "hellaswag": ("h.jsonl", json.dumps({"query": "Cooking: stir", "choices": list("abcd"), "gold": 2}) + "\n", {},
                  {"ctx": "stir", "C": "c", "gold": 2, "label": "C"}),
    "arc": ("a.jsonl", json.dumps(ARC_ROW) + "\n", {}, {"question": "Which?", "textC": "y", "answerKey": "C", "label": 2}),
    "mmlu": ("anatomy_test.csv", "What?,w,x,y,z,D\n", {}, {"question": "What?", "D": "z", "answer": "D", "subject": "anatomy"}),
    "piqa": ("p.jsonl", json.dumps({"goal": "g", "sol1": "a", "sol2": "b"}) + "\n", {}, {"goal": "g", "label": None,
                                                                                          "answer": "NULL"}),
    "jsonl": ("g.jsonl", json.dumps({"x": 1, "y": "z"}) + "\n", dict(rename={"y": "label"}), {"x": 1, "label": "z"}),
    "json": ("g.json", json.dumps({"rows": [{"x": 2}]}), dict(field="rows"), {"x": 2}),
    "csv": ("g.csv", "x,label\n3,true\n", dict(label_map=BOOL_AB), {"x": "3", "label": "A"}),
}


@pytest.mark.parametrize("name", sorted(FAMILY_CASES))
def test_every_format_family_loads_a_small_file_of_its_format(tmp_path, name):
    file_name, text, kwargs, expected = FAMILY_CASES[name]
    path = tmp_path / file_name
    path.write_text(text, encoding="utf-8")
    rows = load(name, path, **kwargs)
    assert len(rows) == 1
    assert {k: rows[0].get(k) for k in expected} == expected


# --- SuperGLUE -------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder, count", [("BoolQ", 3270), ("CB", 56), ("RTE", 277), ("WiC", 500), ("WSC", 104)])
def test_superglue_protocol_row_counts(eep_data, folder, count):
    assert len(load("superglue", eep_data / folder / "val.jsonl")) == count


@pytest.mark.parametrize("folder", ["BoolQ", "WiC"])
def test_superglue_boolean_labels_map_from_strings_and_json_booleans(data, eep_data, folder):
    # the EEP files spell labels "true"/"false", the SuperGLUE copies in ../shared/data use JSON booleans
    for path in (eep_data / folder / "val.jsonl", data / folder.lower() / "val.jsonl"):
        raw = raw_jsonl(path)
        rows = load("superglue", path, label_map=BOOL_AB)
        assert [r["label"] for r in rows] == ["A" if x["label"] in (True, "true") else "B" for x in raw]
        for field in raw[0]:
            if field != "label":
                assert [r[field] for r in rows] == [x[field] for x in raw]


def test_boolq_protocol_worked_example(eep_data):
    row = load("superglue", eep_data / "BoolQ" / "val.jsonl", label_map=BOOL_AB)[7]
    assert row["question"] == "is there a word with q without u"
    assert row["passage"].startswith("List of English words containing Q not followed by U -- ")
    assert row["label"] == "A"


@pytest.mark.parametrize("folder, label_map", [
    ("CB", dict(contradiction="A", entailment="B", neutral="C")),
    ("RTE", dict(entailment="A", not_entailment="B")),
])
def test_superglue_string_label_maps(data, folder, label_map):
    path = data / folder.lower() / "val.jsonl"
    raw = raw_jsonl(path)
    rows = load("superglue", path, label_map=label_map)
    for row, source in zip([rows[0], rows[-1]], [raw[0], raw[-1]]):
        assert row == {**source, "label": label_map[source["label"]]}
    assert sorted(set(r["label"] for r in rows)) == sorted(set(label_map.values()))


def test_superglue_label_outside_the_map_is_an_error(data):
    with pytest.raises(HarnessError, match=r"label 'neutral' is not among the label_map keys"):
        load("superglue", data / "cb" / "val.jsonl", label_map=dict(contradiction="A", entailment="B"))


def test_superglue_label_column_and_rename(tmp_path):
    path = write_jsonl(tmp_path / "copa.jsonl", [{"premise": "p", "choice1": "a", "choice2": "b", "answer": 1}])
    rows = load("superglue", path, label_map={0: "A", 1: "B"}, label_column="answer", rename={"premise": "ctx"})
    assert rows == [{"ctx": "p", "choice1": "a", "choice2": "b", "answer": "B"}]


def test_wsc_rewrite_hand_checked_rows(eep_data):
    rows = load("superglue", eep_data / "WSC" / "val.jsonl", label_map=BOOL_AB, wsc_mark_spans=True)
    assert rows[0]["text"] == (
        "Bernard , who had not told the government official that he was less than 21 when he filed for a "
        "homestead claim, did not consider that he had done anything dishonest. Still, * anyone * who knew "
        "that he was 19 years old could take his claim away from # him # ."
    )
    assert (rows[0]["span1"], rows[0]["span2"], rows[0]["label"]) == ("anyone", "him", "B")
    # the span text replaces the passage's words, so its capital letter wins
    assert rows[5]["text"] == "The large ball crashed right through * The table * because # it # was made of styrofoam."
    assert rows[5]["label"] == "A"


def test_wsc_span_texts_that_differ_from_the_passage(eep_data):
    path = eep_data / "WSC" / "val.jsonl"
    differing, case_only = [], []
    for number, source in enumerate(raw_jsonl(path)):
        words, target = source["text"].split(" "), source["target"]
        originals = [" ".join(words[target[f"span{k}_index"]:][:len(target[f"span{k}_text"].split(" "))])
                     for k in (1, 2)]
        texts = [target["span1_text"], target["span2_text"]]
        if originals != texts:
            differing.append(number)
            case_only += [number] if [o.lower() for o in originals] == [t.lower() for t in texts] else []
    # 9 rows differ (the protocol notes): 8 only in case, row 42 points span2 ('it') at the word 'use'
    assert len(differing) == 9 and len(case_only) == 8 and set(differing) - set(case_only) == {42}
    rows = load("superglue", path, wsc_mark_spans=True)
    for number in differing:
        target = raw_jsonl(path)[number]["target"]
        assert f"* {target['span1_text']} *" in rows[number]["text"]
        assert f"# {target['span2_text']} #" in rows[number]["text"]
    assert "want to # it # it ," in rows[42]["text"]


def test_wsc_overlapping_spans_span1_wins(tmp_path):
    row = {"text": "a b c d e", "label": True,
           "target": {"span1_index": 1, "span1_text": "b c", "span2_index": 2, "span2_text": "c d"}}
    rows = load("superglue", write_jsonl(tmp_path / "wsc.jsonl", [row]), wsc_mark_spans=True)
    # words 1-2 -> '* b c *' (span1 wins word 2, where span2 starts); word 3, the rest of span2, is dropped
    assert rows[0]["text"] == "a * b c * e"


def test_record_flattens_one_row_per_query(tmp_path):
    passage = "Storm hits coast.\n@highlight\nTown flooded\n@highlight\nMayor speaks"
    records = [
        {"idx": 0, "passage": {"text": passage, "entities": []},
         "qas": [{"idx": 0, "query": "@placeholder declared an emergency.",
                  "answers": [{"start": 0, "end": 4, "text": "Mayor"}, {"start": 0, "end": 4, "text": "Mayor"}]},
                 {"idx": 1, "query": "The @placeholder was hit.", "answers": [{"start": 0, "end": 4, "text": "coast"}]}]},
        {"idx": 1, "passage": {"text": "No highlights."}, "qas": [{"idx": 2, "query": "Q @placeholder", "answers": []}]},
    ]
    rows = load("record", write_jsonl(tmp_path / "val.jsonl", records))
    text = "Storm hits coast.\n\nTown flooded\n\nMayor speaks"
    assert rows == [
        {"text": text, "question": "____ declared an emergency.", "answers": ["Mayor", "Mayor"], "idx": 0},
        {"text": text, "question": "The ____ was hit.", "answers": ["coast"], "idx": 1},
        {"text": "No highlights.", "question": "Q ____", "answers": [], "idx": 2},
    ]


# --- SQuAD ----------------------------------------------------------------------------------------

def test_squad_v11_zip_rows_match_the_raw_json(data):
    path = data / "squad" / "dev-v1.1.json.zip"
    with zipfile.ZipFile(path) as archive:
        raw = json.loads(archive.read("dev-v1.1.json"))
    flat = [(a["title"], p["context"], q) for a in raw["data"] for p in a["paragraphs"] for q in p["qas"]]
    rows = load("squad", path)
    assert len(rows) == len(flat) == 10570
    for row, (title, context, qa) in [(rows[0], flat[0]), (rows[-1], flat[-1])]:
        assert row == {"id": qa["id"], "title": title, "context": context, "question": qa["question"],
                       "answers": [a["text"] for a in qa["answers"]], "is_impossible": False}
    assert rows[0]["answers"] == ["Denver Broncos"] * 3
    assert load("squad", path, unique_answers=True)[0]["answers"] == ["Denver Broncos"]


def test_squad_v20_protocol_answers(tmp_path):
    squad2 = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "ctx", "qas": [
        {"id": "1", "question": "q1", "is_impossible": False,
         "answers": [{"text": "b", "answer_start": 0}, {"text": "a", "answer_start": 0}, {"text": "b", "answer_start": 0}]},
        {"id": "2", "question": "q2", "is_impossible": True, "answers": [],
         "plausible_answers": [{"text": "x", "answer_start": 0}, {"text": "x", "answer_start": 0}]},
    ]}]}]}
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(squad2))
    protocol = load("squad", path, unique_answers=True, impossible_answer="impossible to answer")
    assert [r["answers"] for r in protocol] == [["b", "a"], ["x", "impossible to answer"]]
    assert [r["is_impossible"] for r in protocol] == [False, True]
    plain = load("squad", path)
    assert [r["answers"] for r in plain] == [["b", "a", "b"], []]


# --- DROP -----------------------------------------------------------------------------------------

def test_drop_prompt_format_jsonl(data):
    path = data / "drop" / "drop_v0_dev.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    rows = load("drop", path)
    assert len(rows) == len(raw) == 9536
    for row, source in [(rows[0], raw[0]), (rows[1], raw[1]), (rows[-1], raw[-1])]:
        passage, question = re.fullmatch(r"Passage: (.*)\nQuestion: (.*)\nAnswer:", source["context"], re.S).groups()
        assert row == {"prompt": passage, "question": question, "answers": source["ref_text"].split("|"),
                       "completion": source["completion"]}
    assert rows[1]["answers"] == ["Pakistanis and Filipinos", "Pakistani and Filipino"]


def test_drop_only_number_is_refused_on_the_prompt_format(data):
    with pytest.raises(HarnessError, match="only_number=True needs the original drop_dataset_dev.json"):
        load("drop", data / "drop" / "drop_v0_dev.jsonl.gz", only_number=True)


def _drop_answer(number="", date=("", "", ""), spans=()):
    return {"number": number, "date": dict(zip(("day", "month", "year"), date)), "spans": list(spans)}


def test_drop_original_json_only_number(tmp_path):
    original = {
        "nfl_1": {"passage": "P1", "qa_pairs": [
            {"question": "how many", "query_id": "q1", "answer": _drop_answer(spans=["ignored"]),
             "validated_answers": [_drop_answer(number="3"), _drop_answer(spans=["three", "3 yards"]),
                                   _drop_answer(number="3")]},
            {"question": "which team", "query_id": "q2", "answer": _drop_answer(number="7"),
             "validated_answers": [_drop_answer(spans=["Bears"])]},
            {"question": "no validated", "query_id": "q3", "answer": _drop_answer(number="5"),
             "validated_answers": []},
        ]},
        "history_2": {"passage": "P2", "qa_pairs": [
            {"question": "when", "query_id": "q4", "answer": _drop_answer(),
             "validated_answers": [_drop_answer(date=("3", "", "1990")), _drop_answer(date=("", "May", "1990")),
                                   _drop_answer(number="1990")]},
        ]},
    }
    path = tmp_path / "drop_dataset_dev.json"
    path.write_text(json.dumps(original))
    rows = load("drop", path, only_number=True)
    # q2 has no number among its validated answers, q3 none at all; the original `answer` is never used
    assert [(r["prompt"], r["question"], r["answers"]) for r in rows] == [
        ("P1", "how many", ["3", "three", "3 yards"]),
        ("P2", "when", ["3  1990", "May 1990", "1990"]),  # ' '.join([day, month, year]).strip()
    ]
    everything = load("drop", path)
    assert [r["query_id"] for r in everything] == ["q1", "q2", "q3", "q4"]
    assert everything[1]["answers"] == ["Bears"] and everything[2]["answers"] == []
    assert load("drop", path, include_original_answer=True)[1]["answers"] == ["7", "Bears"]


# --- GSM8K, WinoGrande, OpenBookQA ----------------------------------------------------------------

def test_gsm8k_folder_and_file(data):
    raw = raw_jsonl(data / "gsm8k" / "test.jsonl")
    splits = load("jsonl", data / "gsm8k")
    assert list(splits) == ["test"] and len(splits["test"]) == 1319
    assert splits["test"][0] == raw[0] and splits["test"][-1] == raw[-1]
    assert load("jsonl", data / "gsm8k" / "test.jsonl") == splits["test"]


def test_winogrande_protocol_fields(data):
    raw = raw_jsonl(data / "winogrande" / "dev.jsonl")
    rows = load("winogrande", data / "winogrande")  # the protocol passes the folder
    assert len(rows) == 1267
    assert [r["answer"] for r in rows] == [{"1": "A", "2": "B"}[x["answer"]] for x in raw]
    first = raw[0]
    assert rows[0]["opt1"] == "Sarah was a much better surgeon than Maria so Sarah always got the easier cases."
    assert rows[0]["opt2"] == first["sentence"].replace("_", first["option2"])
    assert rows[0]["cont"] == " always got the easier cases."
    with_labels = load("winogrande", data / "winogrande" / "dev.jsonl",
                       labels_path=data / "winogrande" / "dev-labels.lst")
    assert with_labels == rows


def test_winogrande_labels_file_and_missing_answers(tmp_path):
    sentences = [{"qID": str(i), "sentence": f"s{i} _ end", "option1": "x", "option2": "y"} for i in range(3)]
    path = write_jsonl(tmp_path / "test.jsonl", sentences)
    assert [r["answer"] for r in load("winogrande", path)] == ["NULL"] * 3
    (tmp_path / "labels.lst").write_text("2\n1\n2\n")
    rows = load("winogrande", path, labels_path=tmp_path / "labels.lst")
    assert [r["answer"] for r in rows] == ["B", "A", "B"]
    write_jsonl(path, [{**sentences[0], "answer": "1"}] + sentences[1:])
    with pytest.raises(HarnessError, match="disagrees with"):
        load("winogrande", path, labels_path=tmp_path / "labels.lst")


def test_obqa_jsonl_with_fact1(data):
    path = data / "openbookqa" / "test_complete.jsonl"
    raw = raw_jsonl(path)
    rows = load("obqa", path)
    assert len(rows) == 500
    for row, source in [(rows[0], raw[0]), (rows[-1], raw[-1])]:
        assert row == {"id": source["id"], "question_stem": source["question"]["stem"],
                       **{c["label"]: c["text"] for c in source["question"]["choices"]},
                       "answerKey": source["answerKey"], "fact1": source["fact1"]}
    assert "fact1" not in load("obqa", data / "openbookqa" / "test.jsonl")[0]


def test_obqa_tsv_agrees_with_jsonl(data, eep_data):
    tsv_rows = load("obqa", eep_data / "openbookqa" / "Main" / "test.tsv")
    assert tsv_rows == load("obqa", data / "openbookqa" / "test.jsonl")
    assert len(load("obqa", eep_data / "openbookqa" / "Main" / "dev.tsv")) == 500


# --- HellaSwag ------------------------------------------------------------------------------------

def _hellaswag_text_items(path):
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[:-1]
    return [lines[i:i + 6] for i in range(0, len(lines), 6)]


def test_hellaswag_text_form(data):
    path = data / "hellaswag" / "hellaswag_val_full.txt.bz2"
    items = _hellaswag_text_items(path)
    rows = load("hellaswag", path)
    assert len(rows) == len(items) == 10042
    assert rows[0]["ctx"] == "A man is sitting on a roof. he" and rows[0]["label"] == "D"
    for row, item in [(rows[0], items[0]), (rows[-1], items[-1])]:
        query, gold, *endings = item
        assert row == {"query": query, "ctx": query[query.index(": ") + 2:], "A": endings[0], "B": endings[1],
                       "C": endings[2], "D": endings[3], "endings": endings, "gold": int(gold),
                       "label": "ABCD"[int(gold)]}


def test_hellaswag_jsonl_form_agrees_with_text_form(data, tmp_path):
    path = data / "hellaswag" / "hellaswag_val_full.txt.bz2"
    items = _hellaswag_text_items(path)[:200]
    as_jsonl = [{"query": q, "choices": endings, "gold": int(g)} for q, g, *endings in items]
    jsonl_rows = load("hellaswag", write_jsonl(tmp_path / "hellaswag.jsonl", as_jsonl))
    assert jsonl_rows == load("hellaswag", path)[:200]


def test_hellaswag_ctx_drops_only_up_to_the_first_colon_space(tmp_path):
    row = {"query": "Label: ctx says: more", "choices": ["a", "b", "c", "d"], "gold": 1}
    assert load("hellaswag", write_jsonl(tmp_path / "h.jsonl", [row]))[0]["ctx"] == "ctx says: more"


# --- ARC, MMLU, PIQA ------------------------------------------------------------------------------

def test_arc_skips_rows_without_four_choices(data):
    path = data / "arc_challenge" / "ARC-Challenge-Test.jsonl"
    raw = raw_jsonl(path)
    four = [x for x in raw if len(x["question"]["choices"]) == 4]
    rows = load("arc", path)
    assert len(raw) == 1172 and len(rows) == len(four) == 1165
    assert [r["id"] for r in rows] == [x["id"] for x in four]
    for row, source in zip(rows, four):
        labels = [c["label"] for c in source["question"]["choices"]]
        # numeric labels '1'..'4' and letters 'A'..'D' both map by position
        expected = "ABCD"[int(source["answerKey"]) - 1] if labels == ["1", "2", "3", "4"] else source["answerKey"]
        assert row["answerKey"] == expected
        assert [row[f"text{c}"] for c in "ABCD"] == row["choices"] == [c["text"] for c in source["question"]["choices"]]
    assert any(x["answerKey"].isdigit() for x in four)


def test_arc_num_choices_none_keeps_every_row(data):
    rows = load("arc", data / "arc_challenge" / "ARC-Challenge-Test.jsonl", num_choices=None)
    assert len(rows) == 1172
    five = [r for r in rows if len(r["choices"]) == 5]
    assert len(five) == 3 and all("textE" in r for r in five)


def _csv_records(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_mmlu_folder_dev_is_train_test_is_test(data):
    splits = load("mmlu", data / "mmlu")
    assert {k: len(v) for k, v in splits.items()} == {"train": 285, "test": 14042}
    anatomy = load("mmlu", data / "mmlu", subject="anatomy")
    dev = _csv_records(data / "mmlu" / "dev" / "anatomy_dev.csv")
    test = _csv_records(data / "mmlu" / "test" / "anatomy_test.csv")
    assert len(anatomy["train"]) == len(dev) == 5 and len(anatomy["test"]) == len(test)
    columns = ["question", "A", "B", "C", "D", "answer"]
    assert anatomy["test"][-1] == {**dict(zip(columns, test[-1])), "subject": "anatomy"}
    assert anatomy["train"][0] == {**dict(zip(columns, dev[0])), "subject": "anatomy"}
    assert splits["test"][0]["subject"] == "abstract_algebra"
    one_file = load("mmlu", data / "mmlu" / "test" / "anatomy_test.csv")
    assert one_file == anatomy["test"]


def test_mmlu_unknown_subject_is_an_error(data):
    with pytest.raises(HarnessError, match="no test/astrology_test.csv"):
        load("mmlu", data / "mmlu", subject="astrology")


def test_piqa_with_labels(tmp_path):
    goals = [{"goal": f"g{i}", "sol1": "a", "sol2": "b"} for i in range(3)]
    path = write_jsonl(tmp_path / "valid.jsonl", goals)
    (tmp_path / "valid-labels.lst").write_text("1\n0\n1\n")
    rows = load("piqa", path, labels_path=tmp_path / "valid-labels.lst")
    assert [(r["goal"], r["label"], r["answer"]) for r in rows] == [("g0", 1, "B"), ("g1", 0, "A"), ("g2", 1, "B")]
    assert [r["answer"] for r in load("piqa", path)] == ["NULL"] * 3
    (tmp_path / "short.lst").write_text("1\n")
    with pytest.raises(HarnessError, match="has 1 labels but"):
        load("piqa", path, labels_path=tmp_path / "short.lst")


# --- generic loaders, compression, missing files --------------------------------------------------

def test_generic_json_csv_tsv(tmp_path):
    records = [{"q": "one", "y": "yes"}, {"q": "two", "y": "no"}]
    (tmp_path / "d.json").write_text(json.dumps({"data": records}))
    expected = [{"question": "one", "y": "A"}, {"question": "two", "y": "B"}]
    kwargs = dict(label_map=dict(yes="A", no="B"), label_column="y", rename={"q": "question"})
    assert load("json", tmp_path / "d.json", field="data", **kwargs) == expected
    with pytest.raises(HarnessError, match="name the key that holds the records with `field`"):
        load("json", tmp_path / "d.json")
    (tmp_path / "d.csv").write_text('q,y\none,yes\n"two",no\n')
    assert load("csv", tmp_path / "d.csv", **kwargs) == expected
    (tmp_path / "d.tsv").write_text("one\tyes\ntwo\tno\n")
    assert load("csv", tmp_path / "d.tsv", fieldnames=["q", "y"], **kwargs) == expected


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".zip"])
def test_compressed_files_load_alike(tmp_path, suffix):
    rows = [{"question": "é?", "label": True}, {"question": "b", "label": False}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path = tmp_path / f"val.jsonl{suffix}"
    if suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    elif suffix == ".bz2":
        path.write_bytes(bz2.compress(text.encode()))
    elif suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("val.jsonl", text)
    else:
        path.write_text(text, encoding="utf-8")
    expected = [{"question": "é?", "label": "A"}, {"question": "b", "label": "B"}]
    assert load("superglue", path, label_map=BOOL_AB) == expected
    # a config naming the uncompressed file finds the compressed one beside it
    assert load("superglue", tmp_path / "val.jsonl", label_map=BOOL_AB) == expected


def test_zip_with_several_members_is_an_error(tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.jsonl", "{}\n")
        archive.writestr("b.jsonl", "{}\n")
    with pytest.raises(HarnessError, match="must hold exactly one file, found 2"):
        load("jsonl", path)


@pytest.mark.parametrize("name, relative, source", [
    ("superglue", "BoolQ/val.jsonl", "BoolQ is available from SuperGLUE"),
    ("squad", "SQuAD2.0/dev-v2.0.json", "rajpurkar.github.io/SQuAD-explorer"),
    ("drop", "drop/drop_dataset_dev.json", "allenai.org/data/drop"),
    ("arc", "ARC/ARC-c/ARC-Challenge-Dev.jsonl", "allenai.org/data/arc"),
    ("winogrande", "winogrande/dev.jsonl", "github.com/allenai/winogrande"),
    ("mmlu", "mmlu/test/anatomy_test.csv", "hendrycks"),
    ("superglue", "somewhere/val.jsonl", "super.gluebenchmark.com"),  # no name in the path: the family's sources
])
def test_missing_file_names_the_path_and_the_source(tmp_path, name, relative, source):
    path = tmp_path / relative
    with pytest.raises(HarnessError) as error:
        load(name, path)
    message = str(error.value)
    assert f"data file {path} not found" in message and source in message
    assert "\n" not in message


def test_missing_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(HarnessError, match=f"data folder {re.escape(str(tmp_path / 'mmlu'))} not found; MMLU is"):
        load("mmlu", tmp_path / "mmlu", subject="anatomy")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(HarnessError, match=r"bad.jsonl:2: not a JSON line"):
        load("jsonl", path)
