# Block Drop (Unified MoE compression): drop the --drop_n most similar decoder blocks (paper: Mixtral 5,
# DeepSeek 4). mode: 'discrete' (the reference's default) or 'consecutive' (one contiguous run; compares
# h_i with h_{i+n}, fixing the reference's off-by-one). Paper calibration: C4 train, 128 samples x 2048 tokens.
method = dict(type='block_drop', mode='discrete')
