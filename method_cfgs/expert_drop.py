# Expert Drop (Unified MoE compression, DaizeDong/Unified-MoE-Compression): mean routing weight per expert.
# The reference's default is global pruning (per-layer budgets differ); Mixtral keeps 6 of 8, DeepSeek 48 of 64.
# Paper calibration: C4 train, 128 samples x 2048 tokens. preserve_gate=True keeps the E-way router.
method = dict(type='expert_drop', mode='global', preserve_gate=False)
