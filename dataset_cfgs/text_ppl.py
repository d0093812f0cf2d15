# Perplexity of any text file: a .jsonl file with a text field per record, or plain text (one
# document; split='paragraph' or 'line' for several). Copy this file and edit `path` (and `field`),
# or point it at your file through the ./data convention: put the file at DIR/corpus.txt and pass
# --data_root DIR. Rolling windows of the model's max_seq_len tokens, as dataset_cfgs/c4_ppl.py.
from mmengine.config import read_base

with read_base():
    from ..model_cfgs.lm_eval_default import lm_eval_model

models = [lm_eval_model]

text_datasets = [
    dict(
        abbr='text_ppl',
        reader_cfg=dict(type='text', path='./data/corpus.txt', field='text', split='file',
                        input_columns=['text']),
        infer_cfg=dict(
            prompt_template=dict(template='{text}'),
            inferencer=dict(type='RollingPPLInferencer', stride=None),
        ),
        eval_cfg=dict(evaluator=dict(type='PerplexityEvaluator')),
    )
]
