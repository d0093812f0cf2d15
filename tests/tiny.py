"""Tiny random models and a tiny tokenizer, built by the tests themselves (nothing is downloaded)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab, ... set it): missing real data fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_shared(path: Path | None = None) -> Path:
    """``path`` (default: the ../shared folder itself), or skip the test; under CI=true, fail it.

    A third of the suite reads ../shared; a CI job without it must not pass by skipping them all.
    """
    path = SHARED if path is None else Path(path)
    if path.exists():
        return path
    message = f"{path} is absent; real-data tests need ../shared beside the repository"
    if in_ci():
        pytest.fail(f"{message} (CI=true: provide it to the job, or unset CI to skip these tests)", pytrace=False)
    pytest.skip(message)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes. A. Yes B. No",
    "Passage: 1 2 3 4 5 6 7 8 9 0 + - * / = #### Let's think step by step.",
    "According to the above passage, answer the following question.",
]


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 300):
    """A byte-level BPE tokenizer with <s>, </s>, <unk>, <pad>, saved to ``out_dir`` and returned."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(out_dir)
    return fast


def tiny_config(arch: str = "mixtral", vocab_size: int = 300, **overrides):
    """A transformers config of a tiny model of the given architecture."""
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    per_arch = {
        "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
        "llama": dict(),
    }
    kwargs = {**common, **per_arch.get(arch, {}), **overrides}
    return AutoConfig.for_model(arch, **kwargs)


def build_tiny_model(out_dir: str | Path, arch: str = "mixtral", seed: int = 0, **overrides):
    """A tiny random causal LM saved with ``save_pretrained`` to ``out_dir`` (fp32), and returned."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    model.eval()
    model.save_pretrained(out_dir)
    return model
