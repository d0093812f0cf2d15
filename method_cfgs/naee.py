# NAEE (Lucky-Lance/Expert_Sparsity): enumerate kept sets, argmin ||Z - Z_hat||_F on cached tokens.
# Paper calibration: C4 train shard 00000, 128 blocks x 2048 tokens (docs shuffled with seed 42), batch 8.
# mode: 'layerwise' (X from the original model) or 'progressive' (X after earlier layers are pruned).
# max_combinations: above it, a seeded sample of kept sets (HC-SMoE sampled 10^5 for Qwen).
# dynamic_skip: beta_l = median of w(2)/w(1), the second expert skipped when w2 < beta * w1.
method = dict(type='naee', mode='layerwise', prune=True, dynamic_skip=False, max_combinations=100000)
