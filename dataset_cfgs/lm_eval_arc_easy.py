# ARC-Easy test as lm-evaluation-harness's arc_easy task: 'Question: {question}\nAnswer:' then each
# choice after a space; every item kept (num_choices=None: lm-eval keeps the 3- and 5-choice ones).
# Metrics: accuracy, accuracy_norm. Data: --data_root ../shared/data.
from mmengine.config import read_base

with read_base():
    from ..model_cfgs.lm_eval_default import lm_eval_model

models = [lm_eval_model]  # any model: pass --model_path, or --model_cfg to use a model config instead

arc_easy_datasets = [
    dict(
        abbr='arc_easy',
        reader_cfg=dict(type='arc', path='./data/arc_easy/ARC-Easy-Test.jsonl', num_choices=None,
                        output_column='label', row_transforms=['lm_eval_arc']),
        infer_cfg=dict(
            prompt_template=dict(template='{query}'),
            inferencer=dict(type='PPLInferencer', mode='loglikelihood', continuations='choices',
                            choice_template=' {choice}'),
        ),
        eval_cfg=dict(evaluator=dict(type='AccEvaluator')),
    )
]
