# DeepSeek-MoE-16B base, converted to a stock transformers Qwen2-MoE checkpoint: what the comparison
# suite (compare_cfgs/gpu_moe.py) and every compression method need, since the hub checkpoint's remote
# code (model_type 'deepseek') is neither in harness/compress/adapters.py nor written for transformers 5.
# Convert once (about 33 GB of bf16 weights read and written, one shard in memory at a time), then point here:
#   huggingface-cli download deepseek-ai/deepseek-moe-16b-base --local-dir outputs/deepseek-moe-16b-base
#   python tools/convert_deepseek_moe.py outputs/deepseek-moe-16b-base outputs/deepseek-moe-16b-base-qwen2moe
#   python tools/compare.py compare_cfgs/gpu_moe.py --model_cfg model_cfgs/deepseek-moe-16b-base-qwen2moe.py \
#       --budget 32 --budget 48 --work_dir outputs/compare_deepseek
# Same function as the original (harness/models/deepseek_v1.py; bf16: the router's softmax runs in fp32
# here, in bf16 in the remote code). Base model: no chat template, the tokenizer adds the BOS itself.
models = [
    dict(
        type='HFCausalLM',
        abbr='deepseek-moe-16b-base',
        path='outputs/deepseek-moe-16b-base-qwen2moe',
        dtype='bfloat16',
        device_map='auto',
        batch_size=16,
        max_seq_len=4096,
        max_out_len=100,
    )
]
