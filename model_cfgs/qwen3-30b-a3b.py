# Qwen3-30B-A3B (hybrid thinking model), ChatML in its non-thinking form: the prompt ends with an
# empty think block, as apply_chat_template(..., enable_thinking=False) writes it, so the model
# answers directly. No default system turn. Earlier assistant turns (multi-round few-shot) carry no
# think block, as in the official template: `generate_begin` opens only the answer being produced.
# Checked against the Qwen3 tokenizer_config chat_template (no default system turn; with
# enable_thinking=False the generation prompt is '<|im_start|>assistant\n<think>\n\n</think>\n\n').
models = [
    dict(
        type='HFCausalLM',
        abbr='qwen3-30b-a3b',
        path='Qwen/Qwen3-30B-A3B',
        dtype='bfloat16',
        device_map='auto',
        batch_size=16,
        max_seq_len=8192,
        max_out_len=256,
        meta_template=dict(
            round=[
                dict(role='HUMAN', begin='<|im_start|>user\n', end='<|im_end|>\n'),
                dict(role='BOT', begin='<|im_start|>assistant\n', end='<|im_end|>\n', generate=True,
                     generate_begin='<|im_start|>assistant\n<think>\n\n</think>\n\n'),
            ],
        ),
        stop_strings=['<|im_end|>', '<|endoftext|>'],
    )
]
