# Perplexity of C4 validation (the first 1025 documents of c4-validation.00000-of-00008, the
# held-out set of the Unified MoE-compression paper): every token scored once in rolling windows of
# the model's max_seq_len tokens (lm-eval's loglikelihood_rolling). Metrics: loss, token_perplexity,
# word_perplexity, byte_perplexity, bits_per_byte. Data: --data_root ../shared/data.
# Set a stride below max_seq_len - 1 (e.g. stride=512) to give every token more left context.
from mmengine.config import read_base

with read_base():
    from ..model_cfgs.lm_eval_default import lm_eval_model

models = [lm_eval_model]  # any model: pass --model_path, or --model_cfg to use a model config instead

c4_datasets = [
    dict(
        abbr='c4_validation_ppl',
        reader_cfg=dict(type='text', path='./data/c4/c4-validation.00000-of-00008.first1025.jsonl',
                        field='text', input_columns=['text']),
        infer_cfg=dict(
            prompt_template=dict(template='{text}'),
            inferencer=dict(type='RollingPPLInferencer', stride=None),
        ),
        eval_cfg=dict(evaluator=dict(type='PerplexityEvaluator')),
    )
]
