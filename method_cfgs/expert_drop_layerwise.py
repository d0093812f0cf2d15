# Expert Drop, per-layer variant: E - B experts dropped in every layer.
method = dict(type='expert_drop', mode='layerwise', preserve_gate=False)
