# The comparison suite on the committed toy MoE (models/toy-moe: Mixtral, 4 layers x 8 experts, top-2),
# small enough for the tests: two toy tasks in likelihood form, a perplexity corpus of toy prompts,
# every method, a very short EEP search. Run from the repository root:
#   python tools/compare.py compare_cfgs/toy_moe.py --budget 4 --work_dir outputs/compare_toy
_base_ = ['../model_cfgs/toy-moe.py']  # the model (./models/toy-moe); --model_path / --model_cfg replace it

benchmarks = [
    dict(cfg='dataset_cfgs/toy-moe_sort_ppl.py', max_num=12),
    dict(cfg='dataset_cfgs/toy-moe_copy_ppl.py', max_num=12),
    dict(dataset=dict(
        abbr='toy_text_ppl',
        reader_cfg=dict(type='text', path='./data/toy/reverse/dev.jsonl', field='prompt', input_columns=['text']),
        infer_cfg=dict(prompt_template=dict(template='{text}'), inferencer=dict(type='RollingPPLInferencer')),
        eval_cfg=dict(evaluator=dict(type='PerplexityEvaluator')),
    ), max_num=12, metric='token_perplexity'),
]

# One calibration pass shared by every method that needs statistics (compress.py's --calib_cfg etc.).
calibration = dict(calib_cfg='dataset_cfgs/toy-moe_sort_train.py', calib_samples=32, seed=0)

# harness/tasks/efficiency.py's settings (positions are limited to 64 on this model).
efficiency = dict(context_lengths=[32], batch_sizes=[1], decode_context=16, decode_tokens=4, repeats=1, warmup=0)

methods = [
    dict(name='frequency'),
    dict(name='random', seeds=[0, 1]),
    dict(name='keep_first'),
    dict(name='reap'),
    dict(name='expert_drop'),
    dict(name='naee'),
    dict(name='m_smoe'),
    dict(name='hc_smoe'),
    dict(name='layer_drop', drop_n='match'),
    dict(name='block_drop', drop_n='match'),
    dict(name='cd_moe', condense_experts=2, condense_layers='match', calib_samples=8, calib_seq_len=32),
    dict(name='eep', search_cfg='search_cfgs/toy.py',
         settings=dict(init_random=3, prune_evals=5, total_evals=8, rescore_top=1),
         train=dict(benchmark='toy_sort_ppl', range=[12, 28])),
]
