# SuperGLUE COPA validation as lm-evaluation-harness's copa task: the row transform lm_eval_copa
# writes query = premise without its full stop + ' because'/' therefore', and choices = ' ' + the
# choice with its first letter lower-cased; with the target delimiter (choice_template=' {choice}')
# the scored continuation starts with two spaces, as in lm-eval (issue 19: one space changed 8 of 100
# predictions). Metrics: accuracy, accuracy_norm. Data: SuperGLUE's COPA/val.jsonl in
# <data_root>/COPA/ (not in ../shared/data).
from mmengine.config import read_base

with read_base():
    from ..model_cfgs.lm_eval_default import lm_eval_model

models = [lm_eval_model]  # any model: pass --model_path, or --model_cfg to use a model config instead

copa_datasets = [
    dict(
        abbr='copa',
        reader_cfg=dict(type='superglue', path='./data/COPA/val.jsonl', output_column='label',
                        row_transforms=['lm_eval_copa']),
        infer_cfg=dict(
            prompt_template=dict(template='{query}'),
            inferencer=dict(type='PPLInferencer', mode='loglikelihood', continuations='choices',
                            choice_template=' {choice}'),
        ),
        eval_cfg=dict(evaluator=dict(type='AccEvaluator')),
    )
]
