"""Row transforms (reader_cfg.row_transforms): lm-eval's renderings, chaining, and bad input."""
from __future__ import annotations

import json

import pytest

from harness.errors import HarnessError
from harness.openicl.dataset_reader import load_eval_data
from harness.pipeline import EvalTask

COPA_ROWS = [  # SuperGLUE COPA's jsonl shape; text written for this test
    {"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
     "choice2": "He got a hole in his sock.", "question": "cause", "label": 0, "idx": 0},
    {"premise": "I tipped the bottle. ", "choice1": "The liquid in the bottle froze.",
     "choice2": "The liquid in the bottle poured out.", "question": "effect", "label": 1, "idx": 1},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def copa_cfg(path, transforms, **reader):
    return dict(
        abbr="copa",
        reader_cfg=dict(type="superglue", path=path, output_column="label", row_transforms=transforms, **reader),
        infer_cfg=dict(prompt_template=dict(template="{query}"),
                       inferencer=dict(type="PPLInferencer", continuations="choices", choice_template=" {choice}")),
    )


def test_lm_eval_copa_renders_the_premise_connector_and_two_space_choices(tmp_path):
    path = write_jsonl(tmp_path / "copa.jsonl", COPA_ROWS)
    data = load_eval_data(copa_cfg(path, ["lm_eval_copa"]))
    first, second = data.test_rows
    assert first["query"] == "The man broke his toe because"
    assert first["choices"] == [" he dropped a hammer on his foot.", " he got a hole in his sock."]
    assert second["query"] == "I tipped the bottle therefore"  # strip() first, then the full stop goes
    assert second["choices"][1] == " the liquid in the bottle poured out."
    # with the target delimiter, the scored continuation starts with two spaces, as in lm-eval
    task = EvalTask(copa_cfg(path, ["lm_eval_copa"]))
    choices = task.inferencer.build_items(task.prompt_inputs(None))[0]
    assert [(c.context, c.continuation) for c in choices] == [
        ("The man broke his toe because", "  he dropped a hammer on his foot."),
        ("The man broke his toe because", "  he got a hole in his sock.")]


def test_building_blocks_chain_to_the_same_copa_rendering(tmp_path):
    path = write_jsonl(tmp_path / "copa.jsonl", COPA_ROWS)
    chain = [
        dict(type="strip_suffix", column="premise", suffix=".", into="stem"),
        dict(type="map_value", column="question", mapping=dict(cause="because", effect="therefore"), into="word"),
        dict(type="fill", template="{stem} {word}", into="query"),
        dict(type="lower_first", columns=["choice1", "choice2"]),
        dict(type="fill", template=" {choice1}", into="c1"), dict(type="fill", template=" {choice2}", into="c2"),
        dict(type="collect", columns=["c1", "c2"], into="choices"),
    ]
    chained = load_eval_data(copa_cfg(path, chain)).test_rows
    reference = load_eval_data(copa_cfg(path, ["lm_eval_copa"])).test_rows
    assert [(r["query"], r["choices"]) for r in chained] == [(r["query"], r["choices"]) for r in reference]


def test_lm_eval_arc_on_real_arc_easy_matches_the_file(shared_dir):
    path = shared_dir / "data" / "arc_easy" / "ARC-Easy-Test.jsonl"
    cfg = dict(abbr="arc_e", reader_cfg=dict(type="arc", path=str(path), num_choices=None, output_column="label",
                                             row_transforms=["lm_eval_arc"], test_range="[0:300]"))
    rows = load_eval_data(cfg).test_rows
    raw = [json.loads(line) for line in path.read_text().splitlines()[:300]]
    assert [r["query"] for r in rows] == [f"Question: {r['question']['stem']}\nAnswer:" for r in raw]
    assert [r["choices"] for r in rows] == [[c["text"] for c in r["question"]["choices"]] for r in raw]
    assert [r["label"] for r in rows] == [[c["label"] for c in r["question"]["choices"]].index(r["answerKey"])
                                          for r in raw]
    assert {len(r["choices"]) for r in rows} > {4}  # lm-eval keeps the 3- and 5-choice items


def test_lm_eval_piqa_and_lambada_renderings(tmp_path):
    piqa = write_jsonl(tmp_path / "piqa.jsonl", [{"goal": "Dry a phone", "sol1": "rice", "sol2": "water"}])
    cfg = dict(abbr="piqa", reader_cfg=dict(type="piqa", path=piqa, output_column="label",
                                            row_transforms=["lm_eval_piqa"]))
    labels = tmp_path / "labels.lst"
    labels.write_text("0\n")
    cfg["reader_cfg"]["labels_path"] = str(labels)
    [row] = load_eval_data(cfg).test_rows
    assert (row["query"], row["choices"], row["label"]) == ("Question: Dry a phone\nAnswer:", ["rice", "water"], 0)
    text = write_jsonl(tmp_path / "lambada.jsonl", [{"text": "she opened the  door"}])
    cfg = dict(abbr="lambada", reader_cfg=dict(type="jsonl", path=text, row_transforms=["lm_eval_lambada"]))
    [row] = load_eval_data(cfg).test_rows
    assert (row["context"], row["continuation"]) == ("she opened the ", " door")  # split on single spaces


def test_transforms_apply_to_the_train_split_few_shot_examples_come_from(tmp_path):
    folder = tmp_path / "copa"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", COPA_ROWS[:1])
    write_jsonl(folder / "test.jsonl", COPA_ROWS[1:])
    cfg = dict(abbr="copa", reader_cfg=dict(type="jsonl", path=str(folder), output_column="label",
                                            row_transforms=["lm_eval_copa"]))
    data = load_eval_data(cfg)
    assert data.train_rows[0]["query"] == "The man broke his toe because"
    assert data.test_rows[0]["query"] == "I tipped the bottle therefore"


def test_unknown_transform_lists_the_registered_ones(tmp_path):
    path = write_jsonl(tmp_path / "copa.jsonl", COPA_ROWS)
    with pytest.raises(HarnessError, match=r"unknown row transform type 'copa'; registered: .*lm_eval_copa"):
        load_eval_data(copa_cfg(path, ["copa"]))


def test_a_transform_that_raises_names_the_row_and_the_function(tmp_path):
    rows = [dict(COPA_ROWS[0]), {k: v for k, v in COPA_ROWS[1].items() if k != "premise"}]
    path = write_jsonl(tmp_path / "copa.jsonl", rows)
    with pytest.raises(HarnessError) as err:
        load_eval_data(copa_cfg(path, ["lm_eval_copa"]))
    message = str(err.value)
    assert "row transform 'lm_eval_copa' failed on row 1" in message and "premise" in message
    assert "\n" not in message


def test_a_missing_continuations_column_is_refused_before_any_model(tmp_path):
    path = write_jsonl(tmp_path / "copa.jsonl", COPA_ROWS)
    with pytest.raises(HarnessError, match=r"continuations column 'choices' is not among the columns"):
        # the template uses an existing column; no transform made the 'choices' column
        EvalTask(copa_cfg(path, [dict(type="fill", template="{premise}", into="query")]))
