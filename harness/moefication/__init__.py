"""MoEfication: turn a dense Llama-like model into a Qwen2-MoE that stock transformers loads.

Each MLP's intermediate neurons are split into a shared expert (the neurons that carry the most
output mass on calibration text) and E equal routed experts (balanced k-means of the neurons'
co-activation patterns); a linear router per layer is fitted to rank the experts by the output mass
they hold for a token (``clustering``, ``router``, ``convert``; ``build`` runs the recipe with a
fingerprinted cache). Zhang et al., "MoEfication" (2022), with a shared expert as in Qwen-MoE.
"""
