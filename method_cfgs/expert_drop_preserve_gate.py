# Expert Drop, preserve_gate variant: the E-way router is kept, picks of dropped experts add nothing.
method = dict(type='expert_drop', mode='global', preserve_gate=True)
