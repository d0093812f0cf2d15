"""Expert slimming: prune weights inside experts (Wanda, SparseGPT), unstructured or N:M.

``masks`` holds the mask math, ``wanda`` and ``sparsegpt`` the two algorithms on one (out, in)
weight, ``targets`` which weights of a model are slimmed, ``stats`` the routed-token statistics,
``slim`` the layer-by-layer driver and ``record`` the slimming record written beside the weights.
"""
