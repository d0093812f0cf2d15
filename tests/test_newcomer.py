"""What a newcomer following the README hit (issue 19): warnings, CLI overrides, error messages."""
from __future__ import annotations

import warnings

import pytest

from harness.models.api import ScoreRequest
from harness.models.hf_causal_lm import HFCausalLM


def test_kv_cache_scoring_passes_the_cache_under_the_name_transformers_expects(tiny_mixtral_path):
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache`` and warns about the old
    name (it goes away in 5.40, inside our ``<6`` pin); the KV-cache path must not trigger it."""
    lm = HFCausalLM(str(tiny_mixtral_path), batch_size=2, max_seq_len=64, packed_scoring=False)
    context = [1, 40, 41, 42, 43]
    group = [ScoreRequest(context + [50, 51, 52], len(context)), ScoreRequest(context + [60, 61], len(context))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        [[a, b]] = lm.score([group])
    assert (a.num_tokens, b.num_tokens) == (3, 2)


def test_dtype_and_model_kwargs_override_the_model_config_from_the_command_line():
    from harness.run import Run, add_run_arguments, make_parser

    parser = make_parser(None)
    add_run_arguments(parser)
    args = parser.parse_args(["dataset_cfgs/toy-moe_sort_eval.py", "--work_dir", "outputs/never_written",
                              "--dtype", "bfloat16", "--model_kwargs", '{"attn_implementation": "eager"}'])
    run = Run.prepare(args, process_group=False)
    assert run.model_cfg["dtype"] == "bfloat16"
    assert run.model_cfg["model_kwargs"]["attn_implementation"] == "eager"
    for bad in (["--dtype", "fp32"], ["--model_kwargs", "attn=eager"], ["--model_kwargs", "[1]"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["cfg.py", "--work_dir", "w", *bad])
