# SQuAD v1.1 dev, greedy generation scored by the official SQuAD F1 / exact match (SQuADEvaluator):
# the prompt is lm-evaluation-harness's SQuAD form ('Title: ...\n\nBackground: ...\n\nQuestion: ...\n\nAnswer:'),
# at most 16 new tokens, cut at the first newline. The comparison suites' generation benchmark (REAP's
# claim is about generation). Rows in file order (the first questions share a few articles: a cap of
# N items covers few topics). Metrics: f1 and em. Data: --data_root ../shared/data.
from mmengine.config import read_base

with read_base():
    from ..model_cfgs.lm_eval_default import lm_eval_model

models = [lm_eval_model]  # any model: pass --model_path, or --model_cfg to use a model config instead

squad_datasets = [
    dict(
        abbr='squad_gen',
        reader_cfg=dict(type='squad', path='./data/squad/dev-v1.1.json.zip',
                        input_columns=['title', 'context', 'question'], output_column='answers'),
        infer_cfg=dict(
            prompt_template=dict(template='Title: {title}\n\nBackground: {context}\n\nQuestion: {question}\n\nAnswer:'),
            inferencer=dict(type='GenInferencer', max_out_len=16, stop_strings=['\n']),
        ),
        eval_cfg=dict(evaluator=dict(type='SQuADEvaluator')),
    )
]
