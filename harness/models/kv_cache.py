"""transformers 5.24 renamed the KV cache of a forward from ``past_key_values`` to ``cache``, in the
arguments and in the outputs; the old names still work but warn (and go away in 5.40). Both names,
in one place, so every caller passes and reads the cache under whichever name the model has."""
from __future__ import annotations

import inspect


def cache_argument(model) -> str:
    """The keyword under which ``model.forward`` takes a KV cache."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache of a forward's output."""
    return out["cache"] if "cache" in out else out.past_key_values
