# HC-SMoE with neuron alignment: each cluster member's intermediate neurons are permuted to match the
# cluster's most used member (SwiGLU weight matching, linear_sum_assignment) before the
# frequency-weighted average. Otherwise method_cfgs/hc_smoe.py (average linkage, B clusters per layer).
method = dict(type='hc_smoe', linkage='average', group_counts='uniform', align=True)
