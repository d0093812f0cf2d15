"""Model configs: each parses, and its chat meta template renders what the model's own chat
template (the jinja template of its tokenizer_config.json, written out below) renders."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import load_config, model_config
from harness.openicl.meta_template import render

REPO = Path(__file__).resolve().parents[1]
MODEL_CFGS = REPO / "model_cfgs"

# The models' published chat templates (tokenizer_config.json "chat_template"), reduced to the
# user/assistant/system cases used here.
QWEN15_CHAT = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen3: assistant turns of the history carry no think block; the generation prompt does.
QWEN3_NO_THINKING = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
DEEPSEEK_CHAT = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# OLMoE-0924-Instruct: open-instruct's Tulu template with the BOS prepended. Its line breaks sit
# outside the expressions, so the separators come from the newline after each {{ ... }}; the
# rendering below uses transformers' Jinja settings (trim_blocks, lstrip_blocks) for that reason.
TULU = (
    "{{ bos_token }}{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n' + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# file -> (chat template, special tokens the tokenizer does NOT add itself, template variables)
CHAT_MODELS = {
    "qwen1.5-moe-a2.7b-chat.py": (QWEN15_CHAT, {}, {}),
    "qwen3-30b-a3b.py": (QWEN3_NO_THINKING, {}, {"enable_thinking": False}),
    # DeepSeek's tokenizer adds the BOS itself (add_bos_token), so the meta template leaves it out
    "deepseek-moe-16b-chat.py": (DEEPSEEK_CHAT, {"bos_token": "", "eos_token": "<｜end▁of▁sentence｜>"}, {}),
    "olmoe-1b-7b-0924-instruct.py": (TULU, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}, {}),
}
PROMPT = "Passage: x\nQuestion: y?\nAnswer:"


def models_of(name: str) -> list[dict]:
    return list(load_config(str(MODEL_CFGS / name)).models)


def jinja_render(template: str, messages: list[dict], tokens: dict, variables: dict) -> str:
    jinja2 = pytest.importorskip("jinja2")
    # transformers' apply_chat_template renders with trim_blocks and lstrip_blocks
    return jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
        messages=messages, add_generation_prompt=True, **tokens, **variables)


@pytest.mark.parametrize("name", sorted(p.name for p in MODEL_CFGS.glob("*.py")))
def test_model_config_parses(name):
    models = models_of(name)
    assert len(models) == 1
    model = models[0]
    assert model["type"] == "HFCausalLM"
    if name == "toy-moe.py":
        return
    assert model["device_map"] == "auto"  # a large MoE spreads over every visible GPU
    assert model["dtype"] == ("float16" if name == "mixtral_instruct_eep.py" else "bfloat16")
    resolved = model_config(load_config(str(MODEL_CFGS / name)), "/models/m")
    assert resolved["path"] == "/models/m"


@pytest.mark.parametrize("name", sorted(CHAT_MODELS))
def test_single_turn_prompt_matches_the_official_chat_template(name):
    template, tokens, variables = CHAT_MODELS[name]
    meta = models_of(name)[0]["meta_template"]
    ours = render([{"role": "HUMAN", "prompt": PROMPT}], meta, "gen")
    assert ours == jinja_render(template, [{"role": "user", "content": PROMPT}], tokens, variables)


@pytest.mark.parametrize("name", sorted(CHAT_MODELS))
def test_few_shot_rounds_match_the_official_chat_template(name):
    template, tokens, variables = CHAT_MODELS[name]
    meta = models_of(name)[0]["meta_template"]
    turns = [{"role": "HUMAN", "prompt": "1+1?"}, {"role": "BOT", "prompt": "2"}, {"role": "HUMAN", "prompt": "2+2?"}]
    messages = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                {"role": "user", "content": "2+2?"}]
    assert render(turns, meta, "gen") == jinja_render(template, messages, tokens, variables)


def test_stop_strings_end_the_assistant_turn():
    for name in CHAT_MODELS:
        model = models_of(name)[0]
        bot = next(r for r in model["meta_template"]["round"] if r.get("generate"))
        assert bot["end"].strip() in model["stop_strings"], name


def test_mixtral_instruct_uses_the_protocol_template():
    protocol = models_of("mixtral_instruct_eep.py")[0]
    general = models_of("mixtral-8x7b-instruct-v0.1.py")[0]
    assert protocol["dtype"] == "float16" and general["dtype"] == "bfloat16"
    assert general["meta_template"] == protocol["meta_template"]
    assert render([{"role": "HUMAN", "prompt": PROMPT}], general["meta_template"], "gen") == f"<s>[INST]{PROMPT}[/INST]"
    shots = [{"role": "HUMAN", "prompt": "q1"}, {"role": "BOT", "prompt": "a1"}, {"role": "HUMAN", "prompt": "q2"}]
    assert render(shots, general["meta_template"], "gen") == "<s>[INST]q1[/INST]a1</s>[INST]q2[/INST]"


def test_base_models_have_no_chat_template():
    for name in ("mixtral-8x7b-v0.1.py", "deepseek-moe-16b-base.py", "qwen1.5-moe-a2.7b.py", "olmoe-1b-7b-0924.py",
                 "lm_eval_default.py"):
        model = models_of(name)[0]
        assert model.get("meta_template") is None
        assert render([{"role": "HUMAN", "prompt": PROMPT}], model.get("meta_template"), "gen") == PROMPT
