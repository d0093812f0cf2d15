# LoRA adapters (peft) on the kept experts and routers, for models too large to train whole; the
# adapters are merged into the weights before DIR/model is written. Distillation settings of MC-SMoE.
parts = 'experts+routers'
lora = dict(r=8, alpha=16, dropout=0.0)
kd = dict(alpha=0.2, temperature=2.0)
train = dict(
    learning_rate=2e-4,
    per_device_train_batch_size=8,
    num_train_epochs=1,
    lr_scheduler_type='linear',
    warmup_steps=0.05,
    weight_decay=0.0,
    save_steps=100,
    logging_steps=10,
    seed=0,
)
