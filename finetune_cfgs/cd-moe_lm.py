# CD-MoE stage 1 (duterscmy/CD-MoE; ../shared/docs/METHODS.md): language modelling on C4 with only
# the kept routed and shared experts' linear layers trainable; 1 epoch, batch 8, max length 256,
# learning rate 1e-5 decaying linearly to 5e-6, 20% warm-up. Pad tokens never count (the reference
# counts them: a pitfall not reproduced).
#   python harness/tasks/finetune.py --model_path P --coeff_path PLAN --recipe lm \
#       --train_data ../shared/data/c4/c4-train.00000-of-01024.first1041.jsonl --work_dir DIR
parts = 'experts'
data = dict(max_length=256, text_field='text')
train = dict(
    learning_rate=1e-5,
    per_device_train_batch_size=8,
    num_train_epochs=1,
    lr_scheduler_type='polynomial',  # power 1 down to lr_end: linear to 5e-6 instead of to 0
    lr_scheduler_kwargs=dict(lr_end=5e-6, power=1.0),
    warmup_steps=0.2,  # a fraction below 1: 20% of the steps
    weight_decay=0.0,
    save_steps=50,
    logging_steps=10,
    seed=0,
)
