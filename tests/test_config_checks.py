"""Config mistakes that used to pass silently: two datasets sharing an abbr, abbrs that are not
safe file names, and few-shot examples drawn from the items being evaluated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import dataset_configs, load_config, model_config
from harness.errors import HarnessError
from harness.openicl.dataset_reader import load_eval_data

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_config(str(path))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def dataset(abbr, path="./x.jsonl", retriever=None, **reader):
    infer = dict(prompt_template=dict(template="{q}"), inferencer=dict(type="GenInferencer"))
    if retriever is not None:
        infer["retriever"] = retriever
    return dict(abbr=abbr, reader_cfg=dict(type="jsonl", path=path, input_columns=["q"], output_column="a", **reader),
                infer_cfg=infer)


# --- one abbr, one dataset ---------------------------------------------------------------------------

def test_two_different_datasets_with_one_abbr_are_an_error_naming_both(tmp_path):
    cfg = write_config(tmp_path, "a_datasets = [dict(abbr='same', x=1)]\nb_datasets = [dict(abbr='same', x=2)]\n")
    with pytest.raises(HarnessError) as err:
        dataset_configs(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "a_datasets[0]" in message and "b_datasets[0]" in message and "'same'" in message
    assert str(tmp_path / "cfg.py") in message


def test_the_same_dataset_listed_twice_counts_once(tmp_path):
    # the OpenCompass habit: `datasets = [*boolq_datasets]` beside boolq_datasets itself
    cfg = write_config(tmp_path, "boolq_datasets = [dict(abbr='b', x=1)]\nrte_datasets = [dict(abbr='r')]\n"
                                 "datasets = [*boolq_datasets, *rte_datasets]\n")
    assert [d["abbr"] for d in dataset_configs(cfg)] == ["b", "r"]


# --- abbrs are safe file names -----------------------------------------------------------------------

BAD_NAMES = ["../../../x", "a/b", "a\\b", "..", "a..b", ".hidden", "", None]


@pytest.mark.parametrize("abbr", BAD_NAMES)
def test_dataset_abbrs_that_are_not_plain_file_names_are_refused(tmp_path, abbr):
    cfg = write_config(tmp_path, f"datasets = [dict(abbr={abbr!r})]\n")
    with pytest.raises(HarnessError, match=r"datasets\[0\]\.abbr") as err:
        dataset_configs(cfg)
    assert "\n" not in str(err.value) and str(tmp_path / "cfg.py") in str(err.value)


@pytest.mark.parametrize("abbr", ["../up", "a/b", ".x", ""])
def test_model_abbrs_from_the_config_are_refused(tmp_path, abbr):
    cfg = write_config(tmp_path, f"models = [dict(abbr={abbr!r}, path='/m/model')]\n")
    with pytest.raises(HarnessError, match=r"models\[0\]\.abbr"):
        model_config(cfg, None)


@pytest.mark.parametrize("model_path", ["..", "/models/..", "./.cache/", "."])
def test_model_abbrs_from_the_path_folder_name_are_refused(tmp_path, model_path):
    cfg = write_config(tmp_path, "datasets = []\n")
    with pytest.raises(HarnessError, match="set abbr in the config's models") as err:
        model_config(cfg, model_path)
    assert model_path in str(err.value)


def test_plain_abbrs_pass_and_the_default_model_abbr_is_the_folder_name(tmp_path):
    cfg = write_config(tmp_path, "datasets = [dict(abbr='squad2.0_3'), dict(abbr='ARC-c')]\n")
    assert [d["abbr"] for d in dataset_configs(cfg)] == ["squad2.0_3", "ARC-c"]
    assert model_config(cfg, "/models/Mixtral-8x7B-v0.1/")["abbr"] == "Mixtral-8x7B-v0.1"


def test_infer_refuses_an_escaping_abbr_before_writing_anything(tmp_path, capsys):
    from harness.tasks import infer

    work = tmp_path / "a" / "b" / "work"
    cfg = tmp_path / "escape.py"
    cfg.write_text(f"datasets = [{dataset('../../../x', path=str(REPO / 'data/toy/sort/eval.jsonl'))!r}]\n")
    assert infer.main([str(cfg), "--model_path", str(REPO / "models" / "toy-moe"), "--work_dir", str(work)]) == 2
    assert "'../../../x' contains a path separator" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["escape.py"]


# --- few-shot examples are not the evaluated items ---------------------------------------------------

@pytest.fixture
def one_file(tmp_path):
    return write_jsonl(tmp_path / "one.jsonl", [{"q": f"q{i}", "a": f"a{i}"} for i in range(10)])


def test_fixed_k_examples_that_are_evaluated_items_are_refused(one_file):
    cfg = dataset("d", one_file, dict(type="FixedKRetriever", fix_id_list=[0, 1, 7]), test_range="[5:10]")
    with pytest.raises(HarnessError, match=r"dataset d: FixedKRetriever may show evaluated items \[7\]") as err:
        load_eval_data(cfg)
    assert "allow_test_examples=True" in str(err.value) and "\n" not in str(err.value)


def test_overlap_is_decided_by_index_not_by_file(one_file):
    # the same file, disjoint positions: examples 0-2, evaluated rows 5-9 (test_range) or 3, 4, 8 (subset)
    fixed = dict(type="FixedKRetriever", fix_id_list=[0, 1, 2])
    data = load_eval_data(dataset("d", one_file, fixed, test_range="[5:10]"))
    assert data.indices == [5, 6, 7, 8, 9]
    subset = dict(dataset("d", one_file, fixed), subset=dict(range=[3, 5]))
    assert load_eval_data(subset).indices == [3, 4]
    # an index file that picks an example row is caught
    with pytest.raises(HarnessError, match=r"evaluated items \[2\]"):
        load_eval_data(dict(dataset("d", one_file, fixed), subset=dict(range=[2, 4])))


def test_random_examples_from_the_evaluated_file_are_refused(one_file):
    with pytest.raises(HarnessError, match="RandomRetriever may show evaluated items"):
        load_eval_data(dataset("d", one_file, dict(type="RandomRetriever", ice_num=2)))
    # zero examples draw nothing
    assert len(load_eval_data(dataset("d", one_file, dict(type="RandomRetriever", ice_num=0))).test_rows) == 10


def test_allow_test_examples_opts_in(one_file):
    fixed = dict(type="FixedKRetriever", fix_id_list=[0, 1], allow_test_examples=True)
    assert len(load_eval_data(dataset("d", one_file, fixed)).test_rows) == 10
    rand = dict(type="RandomRetriever", ice_num=2, allow_test_examples=True)
    assert len(load_eval_data(dataset("d", one_file, rand)).test_rows) == 10


def test_a_separate_train_split_may_share_positions_with_the_test_split(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"q": f"t{i}", "a": f"ta{i}"} for i in range(3)])
    write_jsonl(folder / "test.jsonl", [{"q": f"q{i}", "a": f"a{i}"} for i in range(4)])
    data = load_eval_data(dataset("d", str(folder), dict(type="FixedKRetriever", fix_id_list=[0, 1])))
    assert [r["q"] for r in data.train_rows] == ["t0", "t1", "t2"]
    # a folder without the named train split falls back to the test split: that is train = test again
    with pytest.raises(HarnessError, match=r"evaluated items \[0, 1\]"):
        load_eval_data(dataset("d", str(folder), dict(type="FixedKRetriever", fix_id_list=[0, 1]), train_split="dev"))


def test_every_committed_config_passes_the_checks_where_its_data_is_here():
    """The committed configs (toy data is in the repository) keep their abbrs and retrievers valid."""
    checked = 0
    for path in sorted((REPO / "dataset_cfgs").glob("*.py")):
        for cfg in dataset_configs(load_config(str(path))):
            if "toy" in cfg["abbr"]:
                load_eval_data(cfg, str(REPO / "data"))
                checked += 1
    assert checked == 16


# --- the suite's own setting: ../shared must not be silently absent in CI -----------------------------

@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("TRUE", pytest.fail.Exception),
                                         ("", pytest.skip.Exception), ("false", pytest.skip.Exception)])
def test_missing_shared_data_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch, ci, outcome):
    from tests import tiny

    absent = tmp_path / "no_shared_here"
    monkeypatch.setattr(tiny, "SHARED", absent)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=str(absent)):
        tiny.require_shared()
    with pytest.raises(outcome, match="protocol.jsonl"):
        tiny.require_shared(absent / "protocol.jsonl")
    assert tiny.require_shared(tmp_path) == tmp_path
