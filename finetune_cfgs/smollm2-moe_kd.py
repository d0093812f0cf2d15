# Distilling the MoEfied SmolLM2-135M (tools/moefy_smollm2.py) from the dense SmolLM2-135M-Instruct it was
# built from, on C4 train text (docs/SMOLLM2_MOE.md): language-modelling loss + KL to the dense model's
# next-token distribution, experts and routers trainable, attention/embeddings frozen. Short, for a CPU:
#   python harness/tasks/finetune.py --model_path M --recipe kd \
#       --train_data ../shared/data/c4/c4-train.00000-of-01024.first1041.jsonl \
#       --finetune_cfg finetune_cfgs/smollm2-moe_kd.py --max_num 400 --work_dir outputs/moe_kd
# The teacher is the dense folder bench/common.py converts (run from the repository root).
parts = 'experts+routers'
teacher_path = 'bench/.cache/SmolLM2-135M-Instruct'
kd = dict(alpha=1.0, temperature=1.0)
data = dict(max_length=256, text_field='text')
train = dict(
    learning_rate=1e-4,
    per_device_train_batch_size=4,
    num_train_epochs=1,
    max_steps=60,
    lr_scheduler_type='linear',
    warmup_steps=4,
    weight_decay=0.0,
    save_steps=20,
    logging_steps=5,
    seed=0,
)
