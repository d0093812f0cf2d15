# Keep experts 0..B-1 of every MoE layer (a data-free sanity baseline).
method = dict(type='keep_first')
