# DeepSeek-MoE-16B base: no chat template. The checkpoint ships its own modeling code.
# Loads through the remote code (transformers 4.x); compression methods and tools/compare.py need the
# stock Qwen2-MoE conversion instead: model_cfgs/deepseek-moe-16b-base-qwen2moe.py (tools/convert_deepseek_moe.py).
models = [
    dict(
        type='HFCausalLM',
        abbr='deepseek-moe-16b-base',
        path='deepseek-ai/deepseek-moe-16b-base',
        dtype='bfloat16',
        device_map='auto',
        batch_size=16,
        max_seq_len=4096,
        max_out_len=100,
        tokenizer_kwargs=dict(trust_remote_code=True),
        model_kwargs=dict(trust_remote_code=True),
    )
]
