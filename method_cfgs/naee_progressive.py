# NAEE, progressive variant: each layer scored on the inputs it sees once earlier layers are pruned.
method = dict(type='naee', mode='progressive', prune=True, dynamic_skip=False, max_combinations=100000)
