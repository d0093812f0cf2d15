# CD-MoE stage 2 (duterscmy/CD-MoE): supervised fine-tuning of the kept experts on a task's answers,
# 10% warm-up; the other settings as stage 1 (METHODS.md gives no others). Train on the output of
# stage 1 by passing its DIR/model as --model_path (no --coeff_path: the plan is in the folder).
parts = 'experts'
data = dict(max_length=256, answer_template=' {answer}', append_eos=True)
train = dict(
    learning_rate=1e-5,
    per_device_train_batch_size=8,
    num_train_epochs=1,
    lr_scheduler_type='polynomial',
    lr_scheduler_kwargs=dict(lr_end=5e-6, power=1.0),
    warmup_steps=0.1,
    weight_decay=0.0,
    save_steps=50,
    logging_steps=10,
    seed=0,
)
