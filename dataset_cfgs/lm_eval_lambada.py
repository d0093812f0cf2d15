# LAMBADA (OpenAI's test jsonl, one {"text": ...} per line) as lm-evaluation-harness's lambada_openai:
# the row transform lm_eval_lambada writes context = the text without its last word and
# continuation = ' ' + the last word, scored with no delimiter. Metrics (LoglikelihoodEvaluator):
# accuracy = share of items whose continuation is the greedy one (higher is better), perplexity =
# exp(-mean log-likelihood per item) (lower is better). No reference column: none is needed.
# Data: <data_root>/lambada/lambada_test.jsonl (not in ../shared/data).
from mmengine.config import read_base

with read_base():
    from ..model_cfgs.lm_eval_default import lm_eval_model

models = [lm_eval_model]  # any model: pass --model_path, or --model_cfg to use a model config instead

lambada_datasets = [
    dict(
        abbr='lambada_openai',
        reader_cfg=dict(type='jsonl', path='./data/lambada/lambada_test.jsonl', row_transforms=['lm_eval_lambada']),
        infer_cfg=dict(
            prompt_template=dict(template='{context}'),
            inferencer=dict(type='PPLInferencer', mode='loglikelihood', continuations='continuation'),
        ),
        eval_cfg=dict(evaluator=dict(type='LoglikelihoodEvaluator')),
    )
]
