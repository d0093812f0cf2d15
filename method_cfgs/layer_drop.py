# Layer Drop (Unified MoE compression): drop the --drop_n MoE sub-layers with the most similar input and output
# (paper: Mixtral 8, DeepSeek 4). Paper calibration: C4 train, 128 samples x 2048 tokens.
method = dict(type='layer_drop')
