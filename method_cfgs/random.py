# EEP's random-pruning baseline: B of E experts uniformly per weight group ('4', '32', 'layer', ...), seeded.
method = dict(type='random', groups='4', run=0)
