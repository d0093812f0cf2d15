# HC-SMoE (wazenmai/HC-SMoE): agglomerative clustering of the experts' mean outputs over all
# calibration tokens (Euclidean), frequency-weighted merge, routing after the original top-k
# (lowered to the number of clusters where it exceeds it).
# linkage: 'average' (default), 'single', 'complete', 'ward'. group_counts: 'uniform' or 'frequency'.
# The reference's scripts misspell --cluster and silently run K-means; this runs the clustering it names.
# Reference calibration: C4 train shard 00000, 32 blocks x 2048 tokens, seed 42.
method = dict(type='hc_smoe', linkage='average', group_counts='uniform', align=False)
