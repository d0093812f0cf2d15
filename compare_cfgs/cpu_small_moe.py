# The comparison suite on a small real-language MoE on CPU (the MoEfied SmolLM2-135M, 8 experts):
# the seven zero-shot likelihood tasks in lm-eval's form, C4-validation perplexity, efficiency, and
# every method of the harness, capped so the whole table (two budgets) fits a CPU. Run from the
# repository root:
#   python tools/compare.py compare_cfgs/cpu_small_moe.py --model_path MOE_FOLDER --budget 4 --budget 6 \
#       --work_dir outputs/compare_cpu
# --max_num N caps every benchmark further. On a GPU, compare_cfgs/gpu_moe.py is the same suite uncapped.

# lm-eval's scoring (no BOS; model_cfgs/lm_eval_default.py) in float32 on CPU; pass the model with --model_path.
models = [dict(type='HFCausalLM', dtype='float32', batch_size=16, max_seq_len=2048, add_special_tokens=False)]
data_root = '../shared/data'  # the ./data prefix of the dataset configs; --data_root overrides

# metric: the column's number (lm-eval's customary one: acc_norm where the task reports it by length).
benchmarks = [
    dict(cfg='dataset_cfgs/lm_eval_arc_easy.py', max_num=100, metric='accuracy'),
    dict(cfg='dataset_cfgs/ppl_arc-c.py', max_num=100, metric='accuracy_norm'),
    dict(cfg='dataset_cfgs/ppl_boolq.py', max_num=100, metric='accuracy'),
    dict(cfg='dataset_cfgs/ppl_hellaswag.py', max_num=100, metric='accuracy_norm'),
    dict(cfg='dataset_cfgs/ppl_winogrande.py', max_num=100, metric='accuracy'),
    dict(cfg='dataset_cfgs/ppl_obqa.py', max_num=100, metric='accuracy_norm'),
    dict(cfg='dataset_cfgs/ppl_rte.py', max_num=100, metric='accuracy'),
    dict(cfg='dataset_cfgs/c4_ppl.py', max_num=40, metric='token_perplexity'),
]

# One pass on C4 train text serves every method that needs statistics (compress.py's --calib_data,
# --calib_samples, --calib_seq_len, --seed): 32 x 512 tokens on CPU (the papers: 128 x 2048).
calibration = dict(calib_data='../shared/data/c4/c4-train.00000-of-01024.first1041.jsonl', calib_samples=32,
                   calib_seq_len=512, seed=0)

# harness/tasks/efficiency.py's settings: speed-up = decode tokens/s at batch 1 over the full model's.
efficiency = dict(context_lengths=[128], batch_sizes=[1], decode_context=64, decode_tokens=16, repeats=3, warmup=1)

methods = [
    dict(name='frequency'),                       # settings: method_cfgs/<name>.py (the papers' defaults)
    dict(name='random', seeds=[0, 1, 2]),         # mean and sample std over the seeds
    dict(name='keep_first'),
    dict(name='reap'),
    dict(name='expert_drop'),
    dict(name='naee'),
    dict(name='m_smoe'),
    dict(name='hc_smoe'),
    dict(name='layer_drop', drop_n='match'),      # MoE sub-layers dropped: about the experts' bytes of budget B
    dict(name='block_drop', drop_n='match'),      # decoder blocks dropped: about the same bytes
    # CD-MoE (harness/tasks/condense.py's search): N layers condensed to K experts, N matched to the budget;
    # its own calibration documents from the suite's calib_data (the paper: 100 x 256; 8 x 128 here, as its
    # greedy layer search reruns the model's tail for every candidate layer).
    dict(name='cd_moe', condense_experts=2, condense_layers='match', calib_samples=8, calib_seq_len=128),
    # EEP's evolution, short (12 evaluations): fitness on ARC-Easy items 100-131 (beyond the evaluated ones).
    dict(name='eep', search_cfg='search_cfgs/eep.py',
         settings=dict(init_random=6, prune_evals=9, total_evals=12, rescore_top=1),
         train=dict(benchmark='arc_easy', range=[100, 132])),
]
