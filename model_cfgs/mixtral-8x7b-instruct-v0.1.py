# Mixtral-8x7B-Instruct-v0.1 for general use: bfloat16, spread over all GPUs, the EEP protocol's
# chat meta template ('<s>[INST]...[/INST]', no spaces; see mixtral_instruct_eep.py).
# Mistral's own chat format (tokenizer_config chat_template) is the tokenizer's BOS, then
# '[INST] ' + prompt + ' [/INST]' (spaces inside), answers ending '</s>'. This file keeps the
# protocol's template instead, so that results compare with the paper's (docs/PROTOCOL.md relies on
# it): no spaces, and since `begin` writes '<s>' and the tokenizer adds its own BOS, every prompt
# starts with two BOS tokens, as in the protocol. Not the model's native format.
from mmengine.config import read_base

with read_base():
    from .mixtral_instruct_eep import mixtral_meta_template

models = [
    dict(
        type='HFCausalLM',
        abbr='mixtral-8x7b-instruct-v0.1',
        path='mistralai/Mixtral-8x7B-Instruct-v0.1',
        dtype='bfloat16',
        device_map='auto',
        batch_size=16,
        max_seq_len=4096,
        max_out_len=100,
        meta_template=mixtral_meta_template,
        stop_strings=['</s>'],
    )
]
