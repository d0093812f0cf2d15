# REAP (CerebrasResearch/reap): saliency = mean over routed tokens of g_j(x) * ||f_j(x)||_2, uniform per layer.
# Paper calibration: evol-codealpaca (C4 supported), 1024 samples of up to 2048 tokens; pruning 25% / 50%.
method = dict(type='reap')
