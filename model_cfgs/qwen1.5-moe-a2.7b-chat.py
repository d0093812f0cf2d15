# Qwen1.5-MoE-A2.7B-Chat, ChatML. Its chat template adds the default system turn
# 'You are a helpful assistant.' when none is given; it is kept here so prompts match what
# tokenizer.apply_chat_template(..., add_generation_prompt=True) produces. The first Qwen1.5 chat
# checkpoints wrote the default turn without the final '.'; later Qwen1.5 tokenizer configs (and
# Qwen2's) have 'You are a helpful assistant.' with it, which is what this file uses (the MoE
# checkpoint's own tokenizer_config.json could not be read here; re-check it when the hub is reachable).
models = [
    dict(
        type='HFCausalLM',
        abbr='qwen1.5-moe-a2.7b-chat',
        path='Qwen/Qwen1.5-MoE-A2.7B-Chat',
        dtype='bfloat16',
        device_map='auto',
        batch_size=16,
        max_seq_len=4096,
        max_out_len=100,
        meta_template=dict(
            begin='<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n',
            round=[
                dict(role='HUMAN', begin='<|im_start|>user\n', end='<|im_end|>\n'),
                dict(role='BOT', begin='<|im_start|>assistant\n', end='<|im_end|>\n', generate=True),
            ],
        ),
        stop_strings=['<|im_end|>', '<|endoftext|>'],
    )
]
