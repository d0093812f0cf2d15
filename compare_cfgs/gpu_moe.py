# The comparison suite uncapped, for a GPU and a full-size MoE (OLMoE, Qwen1.5-MoE, DeepSeek-MoE, Mixtral):
# every item of the seven tasks, 2000 SQuAD questions generated, C4 perplexity on the 1025 validation documents, the papers' calibration
# (128 x 2048 C4 tokens), the efficiency defaults, a longer EEP search. Methods as compare_cfgs/cpu_small_moe.py.
#   python tools/compare.py compare_cfgs/gpu_moe.py --model_cfg model_cfgs/mixtral-8x7b-v0.1.py \
#       --budget 4 --budget 6 --work_dir outputs/compare_mixtral
# DeepSeek-MoE-16B: its hub checkpoint is remote code (model_type 'deepseek'); convert it to a stock Qwen2-MoE first:
#   python tools/convert_deepseek_moe.py outputs/deepseek-moe-16b-base outputs/deepseek-moe-16b-base-qwen2moe
#   python tools/compare.py compare_cfgs/gpu_moe.py --model_cfg model_cfgs/deepseek-moe-16b-base-qwen2moe.py \
#       --budget 32 --budget 48 --work_dir outputs/compare_deepseek
_base_ = ['./cpu_small_moe.py']

benchmarks = [
    dict(cfg='dataset_cfgs/lm_eval_arc_easy.py', max_num=2000, metric='accuracy'),  # the rest feeds EEP's fitness
    dict(cfg='dataset_cfgs/ppl_arc-c.py', metric='accuracy_norm'),
    dict(cfg='dataset_cfgs/ppl_boolq.py', metric='accuracy'),
    dict(cfg='dataset_cfgs/ppl_hellaswag.py', metric='accuracy_norm'),
    dict(cfg='dataset_cfgs/ppl_winogrande.py', metric='accuracy'),
    dict(cfg='dataset_cfgs/ppl_obqa.py', metric='accuracy_norm'),
    dict(cfg='dataset_cfgs/ppl_rte.py', metric='accuracy'),
    dict(cfg='dataset_cfgs/gen_squad.py', max_num=2000, metric='f1'),  # generation: greedy SQuAD v1.1 answers
    dict(cfg='dataset_cfgs/c4_ppl.py', metric='token_perplexity'),
]
calibration = dict(calib_data='../shared/data/c4/c4-train.00000-of-01024.first1041.jsonl', calib_samples=128,
                   calib_seq_len=2048, seed=0)
efficiency = dict(context_lengths=[128, 512], batch_sizes=[1, 8], decode_context=128, decode_tokens=32, repeats=3,
                  warmup=1)
methods = [
    dict(name='frequency'),
    dict(name='random', seeds=[0, 1, 2, 3, 4]),
    dict(name='keep_first'),
    dict(name='reap'),
    dict(name='expert_drop'),
    dict(name='naee'),
    dict(name='m_smoe'),
    dict(name='hc_smoe'),
    dict(name='layer_drop', drop_n='match'),
    dict(name='block_drop', drop_n='match'),
    dict(name='cd_moe', condense_experts=2, condense_layers='match', calib_samples=100, calib_seq_len=256),
    dict(name='eep', search_cfg='search_cfgs/eep.py', settings=dict(init_random=20, prune_evals=60, total_evals=120,
         rescore_top=1), train=dict(benchmark='arc_easy', range=[2000, 2376])),
]
# lm-eval's scoring on GPUs: bfloat16, spread over every visible GPU (a --model_cfg replaces it).
models = [dict(type='HFCausalLM', dtype='bfloat16', device_map='auto', batch_size=16, max_seq_len=4096,
               add_special_tokens=False)]
