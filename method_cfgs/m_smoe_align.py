# M-SMoE with neuron alignment: each member expert's intermediate neurons are permuted to match its
# group's dominant expert (SwiGLU weight matching, linear_sum_assignment) before the frequency-weighted
# average. Otherwise method_cfgs/m_smoe.py (router-logit similarity, B groups in every layer).
method = dict(type='m_smoe', similarity='router_logits', globally_group=False, align=True)
