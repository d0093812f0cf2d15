"""One run setup for every entry point that loads a model.

Every file under ``harness/tasks/`` reads as a short recipe on top of this:

    args = parse_args(argv)                  # make_parser + add_run_arguments + the task's own
    run = Run.prepare(args, plan_files=...)  # config, model config, tasks, torchrun rank: all
                                             #   checked before anything is written or loaded
    run.start()                              # work dir, log file, resolved config (rank 0)
    lm = run.load_model(coeff_path)          # the model on this rank's device, plan installed

Under ``torchrun`` every rank prepares the same run and loads its own model copy; inference is
shared through ``EvalTask.run`` and only rank 0 (``run.is_main``) writes files.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness import distributed
from harness.cli import apply_compression, setup_work_dir
from harness.config import DTYPES, dataset_configs, load_config, model_config
from harness.errors import HarnessError
from harness.pipeline import EvalTask
from harness.registry import MODELS, build

log = logging.getLogger("harness.run")


class _Parser(argparse.ArgumentParser):
    """argparse with a hint for OpenCompass's spelling of options (``--work-dir``)."""

    def parse_known_args(self, args=None, namespace=None):
        # before argparse's own checks: a required --work_dir given as --work-dir is missing to them
        for token in (sys.argv[1:] if args is None else args):
            name = str(token).split("=", 1)[0]
            if name.startswith("--") and "-" in name[2:] and name not in self._option_string_actions:
                spelled = "--" + name[2:].replace("-", "_")
                if spelled in self._option_string_actions:
                    self.error(f"unrecognized argument {name} (options are spelled with underscores: {spelled})")
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        if message.startswith("unrecognized arguments"):
            hyphenated = [w for w in message.split(":", 1)[1].split() if w.startswith("--") and "-" in w[2:]]
            if hyphenated:
                message += f" (options are spelled with underscores: --{hyphenated[0][2:].replace('-', '_')})"
        super().error(message)


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """The parser of an entry point: its docstring as help, no silent abbreviations (``--coeff``)."""
    return _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)


def int_at_least(minimum: int):
    """An argparse type: an integer of at least ``minimum`` (a count like --batch_size or --max_num)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)


def json_object(text: str) -> dict:
    """``--model_kwargs``: a JSON object (argparse reports a bad one in one line)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object such as '{{\"attn_implementation\": \"eager\"}}'")
    return value


def add_run_arguments(parser, config_help: str = "dataset config file (may also define `models`)") -> None:
    """What every model-running task takes: config, model, work dir, data root, batch size, max items."""
    parser.add_argument("config", help=config_help)
    parser.add_argument("--model_path", help="model folder or hub id; replaces the config's model path")
    parser.add_argument("--model_cfg", help="model config file whose `models` replace the dataset config's")
    parser.add_argument("--work_dir", required=True, help="output folder")
    parser.add_argument("--data_root", help="replaces the ./data prefix of the configs' data paths")
    parser.add_argument("--batch_size", type=positive_int, help="override the model's batch size")
    parser.add_argument("--dtype", choices=DTYPES, help="override the model config's dtype (e.g. float32 on CPU)")
    parser.add_argument("--model_kwargs", type=json_object, metavar="JSON", help='JSON object merged into the model config\'s model_kwargs (from_pretrained arguments), e.g. \'{"attn_implementation": "eager"}\'')
    parser.add_argument("--max_num", type=positive_int, help="use only the first N items of each dataset (the "
                        "evaluated ones, and also a search's train/dev set and --calib_cfg prompts)")


def check_work_dir(path: str) -> Path:
    """The work dir must be a folder we can write in, or creatable as one (no file in the way):
    checked before a model loads, so a wrong folder costs seconds, not a load of Mixtral."""
    work_dir = Path(path)
    for part in (work_dir, *work_dir.parents):
        if part.exists():
            if not part.is_dir():
                raise HarnessError(f"--work_dir {path}: {part} is a file, not a folder; pass another --work_dir")
            if not os.access(part, os.W_OK | os.X_OK):
                raise HarnessError(f"--work_dir {path}: {part} is not writable; pass another --work_dir")
            break
    return work_dir


def check_files(**files: str | None) -> None:
    """Every named file argument that is set must exist (checked before any model loads)."""
    for argument, path in files.items():
        if path and not Path(path).is_file():
            raise HarnessError(f"--{argument} {path} not found; pass an existing file")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


def check_model_folder(model_cfg: dict, where: str) -> None:
    """A local model folder must hold a transformers config.json and its tokenizer folder tokenizer
    files: said in one line before anything loads (``where`` names the argument or config key).
    A folder that does not exist, or a hub id, is left to the loader, which names it the same way."""
    if model_cfg.get("type", "HFCausalLM") != "HFCausalLM":
        return
    from harness.models.hf_causal_lm import _looks_local

    path = str(model_cfg.get("path") or "")
    folder = Path(path).expanduser()
    if _looks_local(path) and folder.exists():
        if not folder.is_dir():
            raise HarnessError(f"{where} {path} is a file; pass the model's folder (config.json, weights, tokenizer)")
        if not (folder / "config.json").is_file():
            raise HarnessError(f"{where} {path} has no config.json, so it is not a Hugging Face model folder; "
                               "pass the folder holding config.json, the weights and the tokenizer files")
    tokenizer = str(model_cfg.get("tokenizer_path") or path)
    tok_folder = Path(tokenizer).expanduser()
    if _looks_local(tokenizer) and tok_folder.is_dir() and not any((tok_folder / f).is_file() for f in TOKENIZER_FILES):
        named = where if tokenizer == path else f"the model config's tokenizer_path ({where} sets the model)"
        raise HarnessError(f"{named} {tokenizer} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                           "pass the folder that holds them")


@dataclass
class Run:
    """A prepared run: everything read and checked, nothing written or loaded yet."""

    args: argparse.Namespace
    cfg: object
    model_cfg: dict
    tasks: list[EvalTask]
    work_dir: Path
    extra: dict = field(default_factory=dict)  # the task's own prepared objects, by name

    @classmethod
    def prepare(cls, args, plan_files: dict[str, str | None] | None = None, process_group: bool = True,
                **other_files: str | None) -> "Run":
        """Join torchrun's process group (``process_group=False``: ranks are independent workers,
        as a search's), check paths and arguments, read the configs and build the evaluation tasks;
        raises HarnessError before anything is written."""
        if process_group:
            distributed.init_from_env()
        work_dir = check_work_dir(args.work_dir)
        check_files(model_cfg=getattr(args, "model_cfg", None), **(plan_files or {}), **other_files)
        cfg = load_config(args.config)
        source = load_config(args.model_cfg) if getattr(args, "model_cfg", None) else cfg
        model_cfg = model_config(source, getattr(args, "model_path", None), getattr(args, "batch_size", None),
                                 dtype=getattr(args, "dtype", None), model_kwargs=getattr(args, "model_kwargs", None))
        check_model_folder(model_cfg, "--model_path" if getattr(args, "model_path", None)
                           else f"models[0].path of {getattr(args, 'model_cfg', None) or args.config}")
        if distributed.device_for_rank():  # torchrun on GPUs: each rank loads onto its own device
            model_cfg["device"] = distributed.device_for_rank()
        tasks = [EvalTask(d, args.data_root, getattr(args, "max_num", None)) for d in dataset_configs(cfg)]
        return cls(args, cfg, model_cfg, tasks, work_dir)

    @property
    def is_main(self) -> bool:
        return distributed.is_main()

    def task(self, path: str, what: str) -> EvalTask:
        """The single dataset of another config file (a search's train or dev data)."""
        datasets = dataset_configs(load_config(path))
        if len(datasets) != 1:
            raise HarnessError(f"{what} {path} defines {len(datasets)} datasets; it must define exactly one")
        return EvalTask(datasets[0], self.args.data_root, getattr(self.args, "max_num", None))

    def start(self) -> None:
        """Create the work dir with its log and resolved config (rank 0 only). The log opens with the
        command and the model (and plan, when one was loaded before the log existed)."""
        if self.is_main:
            setup_work_dir(str(self.work_dir), self.cfg)
        log.info("command: %s", " ".join(shlex.quote(a) for a in ["python", *sys.argv]))
        log.info("arguments: %s", json.dumps({k: v for k, v in vars(self.args).items() if v is not None}, default=str))
        log.info("model %s from %s", self.model_cfg["abbr"], self.model_cfg["path"])
        if self.extra.get("coeff_path"):
            log.info("compression plan %s applied", self.extra["coeff_path"])

    def load_model(self, coeff_path: str | None = None):
        """The model of the run on this rank's device, with the ``--coeff_path`` plan installed."""
        lm = build(MODELS, self.model_cfg)
        apply_compression(lm, coeff_path)
        self.extra["coeff_path"] = coeff_path
        for task in self.tasks:  # inferencer settings that only the model can check (a rolling stride)
            check = getattr(task.inferencer, "check_model", None)
            if check is not None:
                check(lm)
        return lm

    def print(self, text: str) -> None:
        """Console output of the run, also written to the log (rank 0 only, so torchrun prints each line once)."""
        if self.is_main:
            print(text)
            log.info(text)
