# Routing-frequency pruning (M-SMoE's frequency, EEP's baseline): keep the B experts most often in a token's top-k.
method = dict(type='frequency')
