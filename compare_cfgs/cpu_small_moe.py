# The comparison suite on a small real-language MoE on CPU (the MoEfied SmolLM2-135M, 8 experts):
# the seven zero-shot likelihood tasks in lm-eval's form, SQuAD generation (F1), C4-validation perplexity,
# efficiency, and every method of the harness, capped so the whole table (two budgets) fits a CPU.
# Run from the repository root:
#   python tools/compare.py compare_cfgs/cpu_small_moe.py --model_path MOE_FOLDER --budget 4 --budget 6 \
#       --work_dir outputs/compare_cpu
# --max_num N caps every benchmark further. On a GPU, compare_cfgs/gpu_moe.py is the same suite uncapped.

# lm-eval's scoring (no BOS; model_cfgs/lm_eval_default.py) in float32 on CPU; pass the model with --model_path.
models = [dict(type='HFCausalLM', dtype='float32', batch_size=16, max_seq_len=2048, add_special_tokens=False)]
data_root = '../shared/data'  # the ./data prefix of the dataset configs; --data_root overrides

# metric: the column's number (lm-eval's customary one: acc_norm where the task reports it by length).
benchmarks = [
    dict(cfg='dataset_cfgs/lm_eval_arc_easy.py', max_num=50, metric='accuracy'),
    dict(cfg='dataset_cfgs/ppl_arc-c.py', max_num=50, metric='accuracy_norm'),
    dict(cfg='dataset_cfgs/ppl_boolq.py', max_num=50, metric='accuracy'),
    dict(cfg='dataset_cfgs/ppl_hellaswag.py', max_num=50, metric='accuracy_norm'),
    dict(cfg='dataset_cfgs/ppl_winogrande.py', max_num=50, metric='accuracy'),
    dict(cfg='dataset_cfgs/ppl_obqa.py', max_num=50, metric='accuracy_norm'),
    dict(cfg='dataset_cfgs/ppl_rte.py', max_num=50, metric='accuracy'),
    dict(cfg='dataset_cfgs/gen_squad.py', max_num=50, metric='f1'),  # generation (REAP's claim): greedy, 16 tokens
    dict(cfg='dataset_cfgs/c4_ppl.py', max_num=5, metric='token_perplexity'),  # 5 documents, ~2.5k tokens
]

# One pass on C4 train text serves every method that needs statistics (compress.py's --calib_data,
# --calib_samples, --calib_seq_len, --seed): 16 x 512 tokens on CPU (the papers: 128 x 2048).
calibration = dict(calib_data='../shared/data/c4/c4-train.00000-of-01024.first1041.jsonl', calib_samples=16,
                   calib_seq_len=512, seed=0)

# harness/tasks/efficiency.py's settings: speed-up = decode tokens/s at batch 1 over the full model's
# (short on CPU: 8 decode steps after a 32-token prompt, one timed run; noisy on a shared machine).
efficiency = dict(context_lengths=[64], batch_sizes=[1], decode_context=32, decode_tokens=8, repeats=1, warmup=1)

# Settings: method_cfgs/<name>.py (the papers' defaults). The order is the run order (each method at
# every budget before the next): the papers' claims first, so a run stopped early still tests them.
methods = [
    dict(name='reap'),
    dict(name='hc_smoe'),
    dict(name='m_smoe'),
    dict(name='naee'),
    # CD-MoE (harness/tasks/condense.py's search): N layers condensed to K experts, N matched to the budget;
    # its own calibration documents from the suite's calib_data (the paper: 100 x 256; 4 x 128 here, as its
    # greedy layer search reruns the model's tail for every candidate layer).
    dict(name='cd_moe', condense_experts=2, condense_layers='match', calib_samples=4, calib_seq_len=128),
    dict(name='layer_drop', drop_n='match'),      # MoE sub-layers dropped: about the experts' bytes of budget B
    # EEP's evolution, short (12 evaluations): fitness on ARC-Easy items 100-131 (beyond the evaluated ones).
    dict(name='eep', search_cfg='search_cfgs/eep.py',
         settings=dict(init_random=6, prune_evals=9, total_evals=12, rescore_top=1),
         train=dict(benchmark='arc_easy', range=[100, 132])),
    dict(name='frequency'),
    dict(name='random', seeds=[0, 1, 2]),         # mean and sample std over the seeds
    dict(name='expert_drop'),
    dict(name='block_drop', drop_n='match'),      # decoder blocks dropped: about the same bytes
    dict(name='keep_first'),
]
