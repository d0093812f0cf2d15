# MC-SMoE's distillation (UNITES-Lab/MC-SMoE; ../shared/docs/METHODS.md): task loss + 0.2 x KL at
# temperature 2 from the full model; AdamW eps 1e-6, betas (0.9, 0.98), 16 warm-up steps, weight
# decay 0.01, linear decay. Batch size and learning rate are per task in its README (COPA: 8 / 3e-5,
# taken here). The merged model trains whole in their code; here the kept experts and routers do.
parts = 'experts+routers'
kd = dict(alpha=0.2, temperature=2.0)
train = dict(
    learning_rate=3e-5,
    per_device_train_batch_size=8,
    num_train_epochs=1,
    lr_scheduler_type='linear',
    warmup_steps=16,
    weight_decay=0.01,
    adam_beta1=0.9,
    adam_beta2=0.98,
    adam_epsilon=1e-6,
    save_steps=100,
    logging_steps=10,
    seed=0,
)
