# M-SMoE (UNITES-Lab/MC-SMoE, "Merge, Then Compress"): dominant experts = the B most used; every other
# expert joins its most similar dominant; frequency-weighted average; routing after the original top-k.
# similarity: 'router_logits' (the reference's default), 'expert_outputs' or 'weights'.
# globally_group=True: per-layer group counts by MC-SMoE's adaptive rule (budget * L groups in all).
# align=True: permute each member's neurons to its dominant expert first (SwiGLU weight matching).
# Reference calibration (Mixtral): MiniPile validation, blocks of 512 tokens, 10% subset.
method = dict(type='m_smoe', similarity='router_logits', globally_group=False, align=False)
