"""Efficiency of a model with a plan: analytic FLOPs (flops.py), parameters and bytes held
(memory.py), measured prefill/decode speed and peak memory (speed.py)."""
