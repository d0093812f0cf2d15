# DeepSeek-MoE-16B chat, converted to a stock transformers Qwen2-MoE checkpoint (see
# deepseek-moe-16b-base-qwen2moe.py for why and the numerics). Convert once, then point here:
#   huggingface-cli download deepseek-ai/deepseek-moe-16b-chat --local-dir outputs/deepseek-moe-16b-chat
#   python tools/convert_deepseek_moe.py outputs/deepseek-moe-16b-chat outputs/deepseek-moe-16b-chat-qwen2moe
# The chat format is deepseek-moe-16b-chat.py's (tests/test_deepseek_v1.py checks they agree).
models = [
    dict(
        type='HFCausalLM',
        abbr='deepseek-moe-16b-chat',
        path='outputs/deepseek-moe-16b-chat-qwen2moe',
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
    )
]
