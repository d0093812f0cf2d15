# DeepSeek-MoE-16B chat. Its chat template (tokenizer_config.json) renders a user turn as
# 'User: {content}\n\n' and an assistant turn as 'Assistant: {content}<｜end▁of▁sentence｜>',
# after a BOS '<｜begin▁of▁sentence｜>' that the tokenizer adds itself; the generation prompt is
# 'Assistant:' with no trailing space. Earlier assistant turns (multi-round few-shot) keep the space
# ('Assistant: {answer}'); `generate_begin` opens the answer being produced ('Assistant:', and in
# PPL mode 'Assistant:' + the label text, as before).
# Checked against the chat format in deepseek-ai/DeepSeek-MoE README.md ("User: ...\n\nAssistant: ...
# <｜end▁of▁sentence｜>User: ...\n\nAssistant:", BOS added by the tokenizer) and the DeepSeek
# 'User:/Assistant:' Jinja template. No system turn: DeepSeek advises against a system prompt here.
# Loads through the remote code (transformers 4.x); compression methods and tools/compare.py need the
# stock Qwen2-MoE conversion instead: model_cfgs/deepseek-moe-16b-chat-qwen2moe.py (tools/convert_deepseek_moe.py).
models = [
    dict(
        type='HFCausalLM',
        abbr='deepseek-moe-16b-chat',
        path='deepseek-ai/deepseek-moe-16b-chat',
        dtype='bfloat16',
        device_map='auto',
        batch_size=16,
        max_seq_len=4096,
        max_out_len=100,
        meta_template=dict(
            round=[
                dict(role='HUMAN', begin='User: ', end='\n\n'),
                dict(role='BOT', begin='Assistant: ', end='<｜end▁of▁sentence｜>', generate=True,
                     generate_begin='Assistant:'),
            ],
        ),
        stop_strings=['<｜end▁of▁sentence｜>', '\n\nUser:'],
        tokenizer_kwargs=dict(trust_remote_code=True),
        model_kwargs=dict(trust_remote_code=True),
    )
]
