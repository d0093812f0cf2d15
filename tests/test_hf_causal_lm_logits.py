"""The one-pass log-normaliser of packed scoring against torch's logsumexp and argmax."""
import torch

from harness.models.hf_causal_lm import _log_norm_and_argmax


def test_log_norm_and_argmax_equal_logsumexp_and_argmax():
    torch.manual_seed(0)
    logits = torch.randn(37, 301) * 8
    logits[3, 17] = 1e4  # one dominant entry: the max shift keeps exp finite
    expected_norm, expected_best = torch.logsumexp(logits, -1), logits.argmax(-1)
    norm, best = _log_norm_and_argmax(logits.clone())
    assert torch.allclose(norm, expected_norm, atol=1e-5, rtol=0) and torch.equal(best, expected_best)
