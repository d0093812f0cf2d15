"""The EEP protocol's dataset configs against the protocol's own record of them.

Three independent sources are checked against what ``dataset_cfgs/`` builds:
- ``../shared/eep/protocol_eval_configs.jsonl`` (one record per released config: paths, columns,
  prompt strings, subset mechanics, scorer, lengths, meta template);
- the raw data files, read here with the protocol's loader rules written out in this file, and
  the protocol's templates filled by plain string replacement and wrapped in '<s>[INST]...[/INST]';
- the documented worked example (BoolQ item 7: 767 characters, sha256 fe74b822...dad2a325, 185
  tokens with Mixtral's own tokenizer from the mistral-common package).
Data the protocol used but which is not here (ReCoRD, SQuAD 2.0, original DROP json) is replaced by
small files in the real format, written to tmp_path, read with the real index files.
"""
from __future__ import annotations

import glob
import hashlib
import json
import re
from pathlib import Path

import pytest

from harness.config import dataset_configs, load_config, model_config
from harness.errors import HarnessError
from harness.openicl.dataset_reader import load_index_list
from harness.pipeline import EvalTask
from tests.tiny import SHARED, require_shared

REPO = Path(__file__).resolve().parents[1]
PREFIX = "mixtral-8x7b-instruct-v0.1_"
PROTOCOL_CONFIGS = [
    "arc-c_eval", "arc-e_eval", "boolq_eval", "cb_dev", "cb_eval", "cb_train", "drop_eval", "gsm8k_eval",
    "hellaswag_eval", "obqa_eval", "record_eval", "rte_eval", "squad_dev", "squad_eval", "squad_train",
    "wic_dev", "wic_eval", "wic_train", "winogrande_eval", "wsc_dev", "wsc_eval", "wsc_train",
]
EVALUATORS = {  # protocol class -> our registered name (the EEP behaviour)
    "opencompass.openicl.icl_evaluator.AccEvaluator": "AccEvaluator",
    "opencompass.openicl.icl_evaluator.EMEvaluator": "EEPEMEvaluator",
    "opencompass.datasets.SQuAD20Evaluator": "EEPSQuAD20Evaluator",
    "opencompass.datasets.Gsm8kEvaluator": "Gsm8kEvaluator",
}
POSTPROCESSORS = {
    "opencompass.utils.text_postprocessors.first_capital_postprocess": "first_capital",
    "opencompass.utils.text_postprocessors.first_option_postprocess": "first_option",
    "opencompass.datasets.gsm8k_postprocess": "gsm8k",
    "gsm8k": "gsm8k",
    "ReCoRD": "ReCoRD",
}
LABELS = {  # the protocol's label maps, per task
    "boolq": {"true": "A", "false": "B"}, "wic": {"true": "A", "false": "B"}, "wsc": {"true": "A", "false": "B"},
    "cb": {"contradiction": "A", "entailment": "B", "neutral": "C"},
    "rte": {"entailment": "A", "not_entailment": "B"},
}
FOLDERS = {"boolq": "BoolQ", "cb": "CB", "rte": "RTE", "wic": "WiC", "wsc": "WSC"}


class FakeModel:
    """What EvalTask.prompts needs of a model: its meta template."""

    def __init__(self, meta_template):
        self.meta_template = meta_template


def load(name: str):
    cfg = load_config(str(REPO / "dataset_cfgs" / f"{PREFIX}{name}.py"))
    return cfg, dataset_configs(cfg)[0]


def prompts(name: str, data_root, **overrides):
    """(EvalTask, prompts) of a protocol config, reader_cfg keys optionally overridden."""
    cfg, dataset = load(name)
    dataset = {**dataset, "reader_cfg": {**dataset["reader_cfg"], **overrides.pop("reader", {})}, **overrides}
    task = EvalTask(dataset, data_root=str(data_root))
    return task, task.prompts(FakeModel(cfg.models[0]["meta_template"]))


def fill(text: str, row: dict) -> str:
    for key, value in row.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def inst(text: str) -> str:
    return "<s>[INST]" + text + "[/INST]"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def protocol(shared_dir):
    path = require_shared(shared_dir / "eep" / "protocol_eval_configs.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["cfg"][:-3]: r for r in records}


@pytest.fixture(scope="module")
def eep_data(shared_dir):
    return shared_dir / "eep" / "data"


@pytest.fixture(scope="module")
def data(shared_dir):
    return shared_dir / "data"


# ----------------------------------------------------------------------------- config == protocol record
def test_every_released_config_has_a_file(protocol):
    assert sorted(protocol) == sorted(PROTOCOL_CONFIGS)
    for name in PROTOCOL_CONFIGS:
        assert (REPO / "dataset_cfgs" / f"{PREFIX}{name}.py").is_file(), name


@pytest.mark.parametrize("name", PROTOCOL_CONFIGS)
def test_config_matches_protocol_record(name, protocol):
    record = protocol[name]
    cfg, dataset = load(name)
    reader, infer, evaluation = dataset["reader_cfg"], dataset["infer_cfg"], dataset["eval_cfg"]
    assert dataset["abbr"] == record["abbr"]
    assert reader["path"] == record["path"]
    assert reader["input_columns"] == record["reader"]["input_columns"]
    assert reader["output_column"] == record["reader"]["output_column"]
    for key in ("test_range", "test_split", "train_split"):
        assert reader.get(key) == record["reader"].get(key), key
    # prompt strings, verbatim
    assert infer["prompt_template"]["template"] == record["template"]
    assert record["ice_template"] is None and "ice_template" not in infer
    assert infer["retriever"]["type"] == record["retriever"]["type"].rsplit(".", 1)[-1] == "ZeroRetriever"
    assert infer["inferencer"]["type"] == record["inferencer_type"]
    # subset
    split = record["inferencer"]
    if split["dataset_split_type"] == "random":
        index_file = dataset["subset"]["index_file"]
        if name.endswith("_eval"):
            assert index_file == split["random_idx"]
        else:  # our seeded stand-in for the unreleased file, same task folder and split name
            folder, stem = split["random_idx"].split("/")[-2], Path(split["random_idx"]).stem
            assert index_file.endswith(f"data/eep_indices/{folder}/{stem}.json")
            assert Path(index_file).is_file()
    else:
        assert dataset["subset"] == dict(start_ratio=split["start_ratio"], end_ratio=split["end_ratio"])
    # scoring
    assert evaluation["evaluator"]["type"] == EVALUATORS[record["evaluator"]["type"]]
    post = record["pred_post"]
    if post is None:
        assert "pred_postprocessor" not in evaluation
    else:
        ours = dict(evaluation["pred_postprocessor"])
        assert ours.pop("type") == POSTPROCESSORS[post["type"]]
        assert ours == {k: v for k, v in post.items() if k != "type"}
    assert ("dataset_postprocessor" in evaluation) == (record["ds_post"] is not None)
    # lengths: an inferencer max_out_len wins over the model's; max_seq_len and batch from the model
    model = cfg.models[0]
    assert infer["inferencer"]["max_out_len"] == split.get("max_out_len", record["model_max_out_len"])
    assert model["max_out_len"] == record["model_max_out_len"]
    assert model["max_seq_len"] == record["max_seq_len"]
    assert model["batch_size"] == record["batch_size"]
    assert model["meta_template"] == record["meta"]
    assert model["abbr"] == "mixtral-8x7b-instruct-v0.1" and model["dtype"] == "float16"


def test_lengths_table_of_the_protocol():
    """The effective lengths the protocol document tabulates (max_out_len, max_seq_len, batch)."""
    table = {"boolq": (20, 2048, 32), "wic": (20, 2048, 32), "wsc": (20, 2048, 32), "rte": (20, 2048, 32),
             "cb": (20, 8192, 32), "drop": (30, 2048, 32), "record": (50, 2048, 64), "squad": (50, 2048, 32),
             "gsm8k": (150, 2048, 32), "hellaswag": (30, 8192, 32), "winogrande": (30, 8192, 32),
             "arc-c": (30, 8192, 32), "arc-e": (30, 8192, 32), "obqa": (30, 8192, 32)}
    for task, expected in table.items():
        cfg, dataset = load(f"{task}_eval")
        model = cfg.models[0]
        assert (dataset["infer_cfg"]["inferencer"]["max_out_len"], model["max_seq_len"], model["batch_size"]) == expected


def test_model_path_override_keeps_the_protocol_model():
    cfg, _ = load("boolq_eval")
    model = model_config(cfg, "/models/mixtral")
    assert model["path"] == model["tokenizer_path"] == "/models/mixtral"
    assert model["abbr"] == "mixtral-8x7b-instruct-v0.1" and model["device_map"] == "auto"


# ----------------------------------------------------------------------------- rendered prompts, real data
BOOLQ_SHA256_HEAD, BOOLQ_SHA256_TAIL = "fe74b822", "dad2a325"


def test_boolq_worked_example(eep_data, protocol):
    task, built = prompts("boolq_eval", eep_data)
    raw = read_jsonl(eep_data / "BoolQ" / "val.jsonl")
    first = built[0]
    digest = hashlib.sha256(first.encode("utf-8")).hexdigest()
    assert len(first) == 767
    assert digest.startswith(BOOLQ_SHA256_HEAD) and digest.endswith(BOOLQ_SHA256_TAIL)
    row = raw[7]
    assert row["question"] == "is there a word with q without u"
    template = protocol["boolq_eval"]["template"]["round"][0]["prompt"]
    assert first == inst(fill(template, {"passage": row["passage"], "question": row["question"]}))
    assert first.startswith("<s>[INST]List of English words containing Q not followed by U -- ")
    assert first.endswith("\nQuestion: is there a word with q without u\nA. Yes\nB. No\nAnswer:[/INST]")
    assert task.data.references[0] == "A"
    index = load_index_list(str(eep_data / "BoolQ" / "random_index.pth"))
    assert len(built) == len(index) == 500
    assert task.data.indices == sorted(index) and task.data.indices[0] == 7 and task.data.indices[-1] == 3262


def _mixtral_tokenizer():
    """Mixtral's tokenizer as transformers builds it from its sentencepiece model (legacy, BOS added)."""
    mistral_common = pytest.importorskip("mistral_common", reason="needs the mistral-common package")
    spm = pytest.importorskip("sentencepiece", reason="needs sentencepiece")
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    model_file = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not model_file.is_file():
        pytest.skip(f"{model_file} is absent from this mistral-common version")
    processor = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    tokenizer = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), legacy=True,
                               add_bos_token=True, add_eos_token=False)
    return tokenizer, processor


def test_boolq_worked_example_tokens(eep_data):
    tokenizer, processor = _mixtral_tokenizer()
    _, built = prompts("boolq_eval", eep_data)
    ids = tokenizer(built[0])["input_ids"]
    assert len(ids) == 185
    assert ids[:6] == [1, 1, 733, 16289, 28793, 1245]  # <s> <s> ▁[ INST ] List: the double BOS
    assert ids[-8:] == [13, 2820, 16981, 28747, 28792, 28748, 16289, 28793]  # \n Answer: [ / INST ]
    # independent reference: the added BOS, then each text segment through sentencepiece itself
    # (which prefixes '▁' to every segment, as the legacy HF tokenizer does after a special token)
    reference = [1]
    for part in re.split(r"(<s>|</s>)", built[0]):
        if part:
            reference += [1] if part == "<s>" else [2] if part == "</s>" else processor.encode(part)
    assert ids == reference
    assert tokenizer("x</s>[INST]")["input_ids"] == [1, processor.encode("x")[-1], 2, 733, 16289, 28793]


def mark_wsc(text: str, target: dict) -> str:
    """WSCDataset_V3, written out: mark span1 with '* ... *' and span2 with '# ... #' by word position."""
    words = text.split(" ")
    spans = [("*", target["span1_index"], target["span1_text"]), ("#", target["span2_index"], target["span2_text"])]
    covered = {}
    for mark, start, span_text in reversed(spans):  # span1 last, so it wins an overlap
        for position in range(start, start + len(span_text.split(" "))):
            covered[position] = (mark, start, span_text)
    out = []
    for position, word in enumerate(words):
        if position not in covered:
            out.append(word)
        elif covered[position][1] == position:
            mark, _, span_text = covered[position]
            out.append(f"{mark} {span_text} {mark}")
    return " ".join(out)


def superglue_fields(task: str, row: dict) -> dict:
    if task == "wsc":
        return {"text": mark_wsc(row["text"], row["target"]), "span1": row["target"]["span1_text"],
                "span2": row["target"]["span2_text"]}
    return row


@pytest.mark.parametrize("task,size", [("boolq", 500), ("cb", 56), ("rte", 277), ("wic", 500), ("wsc", 104)])
def test_superglue_prompts_and_golds(task, size, eep_data, protocol):
    task_obj, built = prompts(f"{task}_eval", eep_data)
    raw = read_jsonl(eep_data / FOLDERS[task] / "val.jsonl")
    template = protocol[f"{task}_eval"]["template"]["round"][0]["prompt"]
    assert len(built) == size
    for position in (0, 1, len(built) - 1):
        row = raw[task_obj.data.indices[position]]
        assert built[position] == inst(fill(template, superglue_fields(task, row)))
    expected_golds = [LABELS[task][str(raw[i]["label"]).lower()] for i in task_obj.data.indices]
    assert task_obj.data.references == expected_golds


def test_wsc_marks_every_row(eep_data, protocol):
    _, built = prompts("wsc_eval", eep_data)
    raw = read_jsonl(eep_data / "WSC" / "val.jsonl")
    template = protocol["wsc_eval"]["template"]["round"][0]["prompt"]
    assert built == [inst(fill(template, superglue_fields("wsc", row))) for row in raw]
    # the span text replaces the passage's words, so its case wins (9 rows of 104)
    changed = [row for row in raw if row["target"]["span1_text"] not in row["text"]
               or row["target"]["span2_text"] not in row["text"]]
    assert changed


def test_wic_keeps_the_typo(eep_data):
    _, built = prompts("wic_eval", eep_data)
    assert "in the above two sentenses the same?" in built[0]


def test_gsm8k_four_shot_chat_prompt(data, protocol):
    task, built = prompts("gsm8k_eval", data)
    questions = read_jsonl(data / "gsm8k" / "test.jsonl")
    turns = protocol["gsm8k_eval"]["template"]["round"]
    shots = "".join(f"[INST]{h['prompt']}[/INST]{b['prompt']}</s>" for h, b in zip(turns[0:8:2], turns[1:8:2]))
    expected = "<s>" + shots + "[INST]" + fill(turns[8]["prompt"], {"question": questions[0]["question"]}) + "[/INST]"
    assert len(built) == 500 and built[0] == expected
    assert (built[0].count("[INST]"), built[0].count("[/INST]"), built[0].count("</s>")) == (5, 5, 4)
    assert built[0].startswith("<s>[INST]Question: Angelo and Melanie")
    assert task.data.indices == list(range(500))
    golds = [task.dataset_postprocessor(ref) for ref in task.data.references[:3]]
    assert golds == [q["answer"].split("#### ")[1].replace(",", "") for q in questions[:3]]


def test_winogrande_prompts(data, protocol):
    task, built = prompts("winogrande_eval", data)
    raw = read_jsonl(data / "winogrande" / "dev.jsonl")
    template = protocol["winogrande_eval"]["template"]["round"][0]["prompt"]
    assert len(built) == len(raw) == 1267
    row = raw[0]
    opts = {"opt1": row["sentence"].replace("_", row["option1"]), "opt2": row["sentence"].replace("_", row["option2"])}
    assert built[0] == inst(fill(template, opts))
    assert task.data.references == [" AB"[int(r["answer"])] for r in raw]


def test_hellaswag_prompts_on_the_text_form(data, protocol):
    """The protocol reads OpenCompass's hellaswag.jsonl; the text form holds the same items."""
    path = require_shared(data / "hellaswag" / "hellaswag_val_full.txt.bz2")
    import bz2

    lines = bz2.open(path, "rt", encoding="utf-8").read().split("\n")
    task, built = prompts("hellaswag_eval", data, reader={"path": str(path)})
    template = protocol["hellaswag_eval"]["template"]["round"][0]["prompt"]
    assert len(built) == 1674
    query, gold, *endings = lines[6 * 1673:6 * 1673 + 6]
    fields = {"ctx": query.split(": ", 1)[-1], **dict(zip("ABCD", endings))}
    assert built[-1] == inst(fill(template, fields))
    assert task.data.references[-1] == "ABCD"[int(gold)]


def test_arc_prompts_skip_items_without_four_choices(data, protocol):
    """The protocol's ARC-Challenge-Dev.jsonl is not here; the Test file has the same format."""
    path = data / "arc_challenge" / "ARC-Challenge-Test.jsonl"
    raw = [r for r in read_jsonl(path) if len(r["question"]["choices"]) == 4]
    task, built = prompts("arc-c_eval", data, reader={"path": str(path)})
    template = protocol["arc-c_eval"]["template"]["round"][0]["prompt"]
    assert len(built) == len(raw) == 1165
    row = raw[-1]
    fields = {"question": row["question"]["stem"],
              **{f"text{letter}": c["text"] for letter, c in zip("ABCD", row["question"]["choices"])}}
    assert built[-1] == inst(fill(template, fields))
    labels = [c["label"] for c in row["question"]["choices"]]
    assert task.data.references[-1] == "ABCD"[labels.index(row["answerKey"])]


def test_obqa_prompts_with_fact(data, protocol):
    path = data / "openbookqa" / "test_complete.jsonl"
    raw = read_jsonl(path)
    task, built = prompts("obqa_eval", data, reader={"path": str(path)})
    template = protocol["obqa_eval"]["template"]["round"][0]["prompt"]
    row = raw[0]
    fields = {"fact1": row["fact1"], "question_stem": row["question"]["stem"],
              **{letter: c["text"] for letter, c in zip("ABCD", row["question"]["choices"])}}
    assert len(built) == 500 and built[0] == inst(fill(template, fields))
    assert built[0].startswith("<s>[INST]Given the fact: ")
    assert task.data.references == [r["answerKey"] for r in raw]


# ----------------------------------------------------------------------------- data not here: crafted files
def test_drop_raw_prompt_on_a_crafted_original_json(tmp_path, eep_data, protocol):
    """Original drop_dataset_dev.json format; 1529 number-bearing questions plus ones to drop."""
    qa_pairs = []
    for i in range(1529):
        qa_pairs.append({"question": f"How many {i}?", "answer": {},
                         "validated_answers": [{"number": str(i), "date": {}, "spans": []}]})
        if i % 100 == 0:  # only spans: not a numeric question, dropped
            qa_pairs.append({"question": f"Who {i}?", "validated_answers": [{"number": "", "spans": ["x"]}]})
    path = tmp_path / "drop_dataset_dev.json"
    path.write_text(json.dumps({"nfl_1": {"passage": "P text.", "qa_pairs": qa_pairs}}))
    task, built = prompts("drop_eval", eep_data, reader={"path": str(path)})
    index = load_index_list(str(eep_data / "drop" / "random_index.pth"))
    assert len(built) == len(index) == 375 and task.data.indices[0] == 7 and task.data.indices[-1] == 1526
    template = protocol["drop_eval"]["template"]
    assert built[0] == fill(template, {"prompt": "P text.", "question": "How many 7?"})  # no <s>, no [INST]
    assert not built[0].startswith("<s>") and "[INST]" not in built[0]
    assert task.data.references[0] == ["7"]


def test_record_prompt_on_a_crafted_file(tmp_path, eep_data, protocol):
    records = []
    for p in range(2000):
        qas = [{"idx": 5 * p + q, "query": f"@placeholder scored {5 * p + q}.",
                "answers": [{"start": 0, "end": 3, "text": f"Team{p}"}, {"start": 9, "end": 12, "text": f"Team{p}"}]}
               for q in range(5)]
        records.append({"idx": p, "passage": {"text": f"Match {p}.\n@highlight\nTeam{p} won"}, "qas": qas})
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    task, built = prompts("record_eval", eep_data, reader={"path": str(path)})
    index = load_index_list(str(eep_data / "ReCoRD" / "random_index.pth"))
    assert len(built) == len(index) == 250 and task.data.indices[0] == 35 and task.data.indices[-1] == 9995
    template = protocol["record_eval"]["template"]["round"][0]["prompt"]
    assert built[0] == inst(fill(template, {"text": "Match 7.\n\nTeam7 won", "question": "____ scored 35."}))
    assert task.data.references[0] == ["Team7", "Team7"]  # every answer text, not deduplicated


def test_squad20_prompt_on_a_crafted_file(tmp_path, eep_data, protocol):
    qas = []
    for i in range(7916):
        if i % 2:
            qas.append({"id": str(i), "question": f"Q{i}?", "is_impossible": True, "answers": [],
                        "plausible_answers": [{"text": "maybe", "answer_start": 0}]})
        else:
            qas.append({"id": str(i), "question": f"Q{i}?", "is_impossible": False,
                        "answers": [{"text": f"A{i}", "answer_start": 0}, {"text": f"A{i}", "answer_start": 0}]})
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "C.", "qas": qas}]}]}))
    task, built = prompts("squad_eval", eep_data, reader={"path": str(path)})
    index = sorted(load_index_list(str(eep_data / "SQuAD2.0" / "random_index.pth")))
    assert len(built) == 500 and task.data.indices == [5937 + i for i in index]
    first = 5937 + index[0]
    template = protocol["squad_eval"]["template"]["round"][0]["prompt"]
    assert built[0] == inst(fill(template, {"context": "C.", "question": f"Q{first}?"}))  # BOT 'Answer:' dropped
    assert "Answer:" not in built[0]
    expected = ["maybe", "impossible to answer"] if first % 2 else [f"A{first}"]
    assert task.data.references[0] == expected


def test_search_subsets_never_overlap_the_squad_evaluation(eep_data):
    evaluation = set(load_index_list(str(eep_data / "SQuAD2.0" / "random_index.pth")))
    train = load_index_list(str(REPO / "data" / "eep_indices" / "SQuAD2.0" / "random_index_train.json"))
    dev = load_index_list(str(REPO / "data" / "eep_indices" / "SQuAD2.0" / "random_index_dev.json"))
    assert not evaluation & set(train) and not evaluation & set(dev) and not set(train) & set(dev)
    assert max(train + dev) < 1979


SUPERGLUE_TRAIN_ROWS = {"cb": 250, "wic": 5428, "wsc": 554}  # SuperGLUE train.jsonl sizes


@pytest.mark.parametrize("task", ["cb", "wic", "wsc"])
@pytest.mark.parametrize("split", ["train", "dev"])
def test_search_splits_read_our_index_files(task, split, tmp_path, eep_data, protocol):
    """A train.jsonl of SuperGLUE's size (val rows repeated) stands in for the real one."""
    val = read_jsonl(eep_data / FOLDERS[task] / "val.jsonl")
    rows = [val[i % len(val)] for i in range(SUPERGLUE_TRAIN_ROWS[task])]
    folder = tmp_path / FOLDERS[task]
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    built_task, built = prompts(f"{task}_{split}", tmp_path)
    index = load_index_list(str(REPO / "data" / "eep_indices" / FOLDERS[task] / f"random_index_{split}.json"))
    assert built_task.data.indices == sorted(index) and len(built) == len(index)
    template = protocol[f"{task}_{split}"]["template"]["round"][0]["prompt"]
    first = rows[built_task.data.indices[0]]
    assert built[0] == inst(fill(template, superglue_fields(task, first)))


@pytest.mark.parametrize("split", ["train", "dev"])
def test_squad_search_splits(split, tmp_path, eep_data):
    qas = [{"id": str(i), "question": f"Q{i}?", "answers": [{"text": "a", "answer_start": 0}]} for i in range(7916)]
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}))
    task, built = prompts(f"squad_{split}", eep_data, reader={"path": str(path)})
    index = load_index_list(str(REPO / "data" / "eep_indices" / "SQuAD2.0" / f"random_index_{split}.json"))
    assert task.data.indices == [5937 + i for i in sorted(index)]


def test_index_tool_reproduces_the_committed_lists(tmp_path, eep_data):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_eep_indices", REPO / "tools" / "make_eep_indices.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    written = tool.make_all(str(eep_data), tmp_path)
    for task, splits in written.items():
        for split, indices in splits.items():
            committed = json.loads((REPO / "data" / "eep_indices" / task / f"random_index_{split}.json").read_text())
            assert committed == indices == sorted(set(indices))
        assert not set(splits["train"]) & set(splits["dev"])
        assert (len(splits["train"]), len(splits["dev"])) == tool.SIZES[task]


# ----------------------------------------------------------------------------- likelihood (lm-eval style) configs
def ppl_task(name: str, data_root, index: int = 0):
    cfg = load_config(str(REPO / "dataset_cfgs" / f"ppl_{name}.py"))
    datasets = dataset_configs(cfg)
    task = EvalTask(datasets[index], data_root=str(data_root))
    assert cfg.models[0].get("meta_template") is None and cfg.models[0]["add_special_tokens"] is False
    return task, task.prompts(FakeModel(None))


def as_tuples(choices):
    return [(c.label, c.context, c.continuation) for c in choices]


def test_ppl_arc_challenge_keeps_every_item(data):
    task, items = ppl_task("arc-c", data)
    raw = read_jsonl(data / "arc_challenge" / "ARC-Challenge-Test.jsonl")
    assert len(items) == len(raw) == 1172
    for position in (0, next(i for i, r in enumerate(raw) if len(r["question"]["choices"]) == 5)):
        row = raw[position]
        context = f"Question: {row['question']['stem']}\nAnswer:"
        texts = [c["text"] for c in row["question"]["choices"]]
        assert as_tuples(items[position]) == [(i, context, " " + t) for i, t in enumerate(texts)]
        labels = [c["label"] for c in row["question"]["choices"]]
        assert task.data.references[position] == labels.index(row["answerKey"])


def test_ppl_boolq_and_rte(data):
    task, items = ppl_task("boolq", data)
    row = read_jsonl(data / "boolq" / "val.jsonl")[0]
    context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    assert as_tuples(items[0]) == [("no", context, " no"), ("yes", context, " yes")]
    assert task.data.references[0] == ("yes" if row["label"] in (True, "true") else "no")
    task, items = ppl_task("rte", data)
    row = read_jsonl(data / "rte" / "val.jsonl")[0]
    context = f"{row['premise']}\nQuestion: {row['hypothesis']} True or False?\nAnswer:"
    assert as_tuples(items[0]) == [("True", context, " True"), ("False", context, " False")]
    assert task.data.references[0] == {"entailment": "True", "not_entailment": "False"}[row["label"]]


def test_ppl_openbookqa(data):
    task, items = ppl_task("obqa", data)
    row = read_jsonl(data / "openbookqa" / "test.jsonl")[0]
    stem = row["question"]["stem"]
    assert as_tuples(items[0]) == [(c["label"], stem, " " + c["text"]) for c in row["question"]["choices"]]
    assert task.data.references[0] == row["answerKey"]


def test_ppl_winogrande_uses_lm_eval_partial_scoring(data):
    task, items = ppl_task("winogrande", data)
    for position in (0, 1, 500):
        row = read_jsonl(data / "winogrande" / "dev.jsonl")[position]
        blank = row["sentence"].index("_")  # lm-eval: context = sentence[:blank] + option
        rest = " " + row["sentence"][blank + 1 :].strip()  # continuation = the rest of the sentence
        assert as_tuples(items[position]) == [("A", row["sentence"][:blank] + row["option1"], rest),
                                              ("B", row["sentence"][:blank] + row["option2"], rest)]
        assert task.data.references[position] == " AB"[int(row["answer"])]


def lm_eval_hellaswag_preprocess(text):
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def test_ppl_hellaswag_cleans_like_lm_eval(data):
    import bz2

    path = data / "hellaswag" / "hellaswag_val_full.txt.bz2"
    lines = bz2.open(path, "rt", encoding="utf-8").read().split("\n")
    task, items = ppl_task("hellaswag", data)
    assert len(items) == 10042
    marked = next(i for i in range(10042) if "[" in "".join(lines[6 * i:6 * i + 6]))
    query, gold, *endings = lines[6 * marked:6 * marked + 6]
    expected = [(i, lm_eval_hellaswag_preprocess(query), " " + lm_eval_hellaswag_preprocess(e))
                for i, e in enumerate(endings)]
    assert as_tuples(items[marked]) == expected
    assert "[" not in "".join(c.context + c.continuation for c in items[marked])
    assert task.data.references[marked] == int(gold)


def test_ppl_mmlu_covers_every_subject(data):
    cfg = load_config(str(REPO / "dataset_cfgs" / "ppl_mmlu.py"))
    datasets = dataset_configs(cfg)
    subjects = sorted(p.name[: -len("_test.csv")] for p in (data / "mmlu" / "test").glob("*_test.csv"))
    assert [d["abbr"] for d in datasets] == [f"mmlu_{s}" for s in subjects] and len(subjects) == 57
    position = subjects.index("high_school_us_history")
    task, items = ppl_task("mmlu", data, position)
    import csv

    with open(data / "mmlu" / "test" / "high_school_us_history_test.csv", newline="", encoding="utf-8") as f:
        records = list(csv.reader(f))
    question, a, b, c, d, answer = records[0]
    context = ("The following are multiple choice questions (with answers) about high school us history.\n\n"
               f"{question.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:")
    assert as_tuples(items[0]) == [(x, context, " " + x) for x in "ABCD"]
    assert len(items) == len(records) and task.data.references[0] == answer


# ----------------------------------------------------------------------------- scoring quirks
def score(name: str, data_root, cases: list[tuple], **reader) -> dict:
    """Post-process and score crafted (prediction, gold) pairs with a config's eval_cfg."""
    task, _ = prompts(name, data_root, reader=reader) if reader else prompts(name, data_root)
    predictions = {str(i): {"prediction": p, "gold": g} for i, (p, g) in enumerate(cases)}
    return task.evaluate(predictions)


def test_first_capital_quirks(eep_data):
    # 'A. Yes' -> A (right); 'Yes' -> Y (wrong); 'Based on ...' -> B (right for B); ' no' -> '' (wrong)
    cases = [("A. Yes", "A"), ("Yes", "A"), ("Based on the passage, no.", "B"), (" no", "B")]
    assert score("boolq_eval", eep_data, cases) == {"accuracy": 50.0}


def test_first_option_quirks(eep_data):
    # RTE, options AB: 'Answer: C' -> 'A' (the cushion pattern finds the A of Answer); 'B) No' -> B;
    # 'Yes' -> ''; 'I think D' -> ''
    cases = [("Answer: C", "A"), ("B) No", "B"), ("Yes", "A"), ("I think D", "B")]
    assert score("rte_eval", eep_data, cases) == {"accuracy": 50.0}
    # CB, options ABC: 'The answer is C.' -> C; 'A' -> A; 'I think D' -> '' (D is not an option)
    cases = [("The answer is C.", "C"), ("A", "A"), ("I think D", "C"), ("C", "B")]
    assert score("cb_eval", eep_data, cases) == {"accuracy": 50.0}


def test_drop_scoring_quirks(tmp_path, eep_data, data):
    path = tmp_path / "drop_dataset_dev.json"
    qa = [{"question": "q", "validated_answers": [{"number": "1"}]}] * 1529
    path.write_text(json.dumps({"p": {"passage": "t", "qa_pairs": qa}}))
    cases = [
        ("5-3=2. So the answer is 14.2.\nQuestion: what about 99?", ["14.8"]),  # 14.2 -> '14' holds '14'
        ("So the answer is 140", ["14"]),  # '14' is a substring of '140'
        ("I cannot tell", ["3"]),  # no number: 'NULL'
        ("So the answer is 7", ["8"]),
    ]
    assert score("drop_eval", eep_data, cases, path=str(path)) == {"score": 50.0}


def test_squad_scoring_quirks(tmp_path, eep_data):
    path = tmp_path / "dev-v2.0.json"
    qas = [{"id": str(i), "question": "q", "answers": [{"text": "a", "answer_start": 0}]} for i in range(7916)]
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}))
    cases = [
        ("The answer is Paris, France", ["Paris, France"]),  # prediction cut at ',', gold is not: wrong
        ("It is impossible to answer.", ["maybe", "impossible to answer"]),
        ("The answer is the U.S. Army", ["U.S. Army"]),  # prediction cut at the first '.': 'u' lacks 'us army'
        ("Denver Broncos won", ["Denver Broncos"]),
    ]
    assert score("squad_eval", eep_data, cases, path=str(path)) == {"score": 50.0}


def test_gsm8k_scoring(data):
    cases = [
        ("48 + 12 = 60. The answer is 1234\nQuestion: next one 5", "So... #### 1,234"),
        ("The answer is 12", "#### 13"),
        ("The answer is 7.0", "#### 7"),
        ("no idea", "#### 0"),
    ]
    assert score("gsm8k_eval", data, cases) == {"accuracy": 50.0}


def test_record_scoring_quirks(tmp_path, eep_data):
    path = tmp_path / "val.jsonl"
    record = {"passage": {"text": "t"}, "qas": [{"query": "q", "answers": [{"text": "x"}]}] * 10000}
    path.write_text(json.dumps(record) + "\n")
    cases = [
        ("Answer: Obama\nmore text", ["Barack Obama", "Obama"]),  # first line, 'Answer: ' removed
        ("obama", ["Obama"]),  # case-sensitive
        ("The Boston Red Sox", ["Red Sox"]),
        ("Yankees", ["Red Sox"]),
    ]
    assert score("record_eval", eep_data, cases, path=str(path)) == {"score": 50.0}


# ----------------------------------------------------------------------------- every config file
CONFIG_FILES = sorted(glob.glob(str(REPO / "dataset_cfgs" / "*.py")) + glob.glob(str(REPO / "model_cfgs" / "*.py")))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(Path(p).relative_to(REPO)))
def test_every_config_file_parses_and_builds_where_its_data_exists(path):
    """Parsing never needs ../shared; prompts are built from the first data root holding the files."""
    cfg = load_config(path)
    models = list(cfg.get("models") or [])
    for model in models:
        assert model["type"] == "HFCausalLM"
    if Path(path).parent.name == "model_cfgs":
        assert len(models) == 1
        return
    roots = [SHARED / "eep" / "data", SHARED / "data", REPO / "data"]
    built, missing = 0, []
    for dataset in dataset_configs(cfg):
        for root in roots:
            try:
                task = EvalTask(dataset, data_root=str(root))
            except HarnessError as exc:
                if "not found" not in str(exc):
                    raise
                missing.append(str(exc))
                continue
            meta = models[0].get("meta_template") if models else None
            assert task.prompts(FakeModel(meta))
            built += 1
            break
    if not built:
        require_shared()  # without ../shared: skip, or fail under CI=true
        pytest.skip(f"no data for {Path(path).name} here: {missing[0]}")


def test_gen_squad_prompts_references_and_scorer_on_the_real_file(data):
    """The suites' generation benchmark: lm-eval's SQuAD prompt from the real v1.1 dev file (read here
    with zipfile + json, not the harness loader), every annotator answer as a reference, 16 new tokens
    cut at a newline, and the official F1/EM: the first gold answer scores 100, a wrong one 0."""
    import json as _json
    import zipfile

    from harness.openicl.evaluators.squad import SQuADEvaluator

    cfg = load_config(str(REPO / "dataset_cfgs" / "gen_squad.py"))
    dataset, = dataset_configs(cfg)
    task = EvalTask(dataset, data_root=str(data), max_num=3)
    prompts = task.prompts(FakeModel(None))
    with zipfile.ZipFile(data / "squad" / "dev-v1.1.json.zip") as z:
        raw = _json.loads(z.read(next(n for n in z.namelist() if n.endswith(".json"))))
    article = raw["data"][0]
    paragraph = article["paragraphs"][0]
    for i in range(3):
        qa = paragraph["qas"][i]
        assert prompts[i] == (f"Title: {article['title']}\n\nBackground: {paragraph['context']}\n\n"
                              f"Question: {qa['question']}\n\nAnswer:")
        assert task.data.references[i] == [a["text"] for a in qa["answers"]]
    inferencer = dataset["infer_cfg"]["inferencer"]
    assert inferencer["max_out_len"] == 16 and inferencer["stop_strings"] == ["\n"]
    gold = [refs[0] for refs in task.data.references]
    assert SQuADEvaluator().score(gold, task.data.references) == {"em": 100.0, "f1": 100.0}
    assert SQuADEvaluator().score(["the 1987 season"] * 3, task.data.references) == {"em": 0.0, "f1": 0.0}
