# OLMoE-1B-7B-0924-Instruct, Tulu chat format: '<|endoftext|>' opens the conversation, a user
# turn is '<|user|>\n{content}\n', an assistant turn '<|assistant|>\n{content}<|endoftext|>\n', and
# the generation prompt is '<|assistant|>\n'. The tokenizer adds no BOS of its own (GPT-NeoX tokenizer,
# add_bos_token false), so the template's '{{ bos_token }}' is written here as `begin`. This is the
# open-instruct Tulu template with the BOS prepended (the model was tuned with open-instruct --add_bos).
models = [
    dict(
        type='HFCausalLM',
        abbr='olmoe-1b-7b-0924-instruct',
        path='allenai/OLMoE-1B-7B-0924-Instruct',
        dtype='bfloat16',
        device_map='auto',
        batch_size=16,
        max_seq_len=4096,
        max_out_len=100,
        meta_template=dict(
            begin='<|endoftext|>',
            round=[
                dict(role='HUMAN', begin='<|user|>\n', end='\n'),
                dict(role='BOT', begin='<|assistant|>\n', end='<|endoftext|>\n', generate=True),
            ],
        ),
        stop_strings=['<|endoftext|>', '\n<|user|>'],
    )
]
