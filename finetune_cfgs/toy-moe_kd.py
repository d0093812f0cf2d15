# The toy MoE's recovery demo (docs/FINETUNE.md): MC-SMoE's loss (task + 0.2 x KL at T=2) and AdamW
# settings, with a learning rate and length sized for a CPU and a 3.4M-parameter model.
_base_ = ['./mc-smoe_kd.py']
data = dict(answer_template=' {answer}\n', append_eos=True)  # the toy was trained on prompt + ' ' + answer + '\n</s>'
train = dict(
    learning_rate=1e-3,
    per_device_train_batch_size=16,
    num_train_epochs=8,  # 56 steps; 4 epochs (28 steps) recover 79.5%, 8 recover 95.5% (docs/FINETUNE.md)
    warmup_steps=16,
    save_steps=25,
    logging_steps=5,
)
