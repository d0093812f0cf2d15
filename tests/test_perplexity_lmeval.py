"""RollingPPLInferencer agrees with lm-eval's ``HFLM.loglikelihood_rolling`` on the same model and
text (fp32, within 1e-4 per token), on real C4 validation documents longer than one window.

lm-eval's ``max_length`` counts a window's input tokens, ours (``max_seq_len``) the tokens of a
window including its last scored target, so ours is lm-eval's + 1; both condition the first token on
the model's prefix token (end-of-text here; lm-eval would take BOS unless told).
"""
from __future__ import annotations

import json

import pytest

from harness.io import PredictionStore
from harness.models.hf_causal_lm import HFCausalLM
from harness.openicl.inferencers.rolling import RollingPPLInferencer
from tests.tiny import SHARED, require_shared

C4 = SHARED / "data" / "c4" / "c4-validation.00000-of-00008.first1025.jsonl"


def test_rolling_loglikelihood_matches_lm_eval(tiny_mixtral_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    docs = [json.loads(line)["text"] for line in require_shared(C4).read_text(encoding="utf-8").splitlines()[:3]]
    lm = HFCausalLM(str(tiny_mixtral_path), max_seq_len=128, batch_size=4, add_special_tokens=False)
    store = PredictionStore(None, None, "")
    RollingPPLInferencer().infer(lm, docs, store)
    ours = [store.done[i]["prediction"] for i in range(len(docs))]

    reference = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, max_length=127, batch_size=4,
                     prefix_token_id=lm.prefix_token_id, add_bos_token=False, softmax_dtype="float64")
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(doc,), idx=0) for doc in docs]
    theirs = reference.loglikelihood_rolling(requests, disable_tqdm=True)
    for record, their_ll, doc in zip(ours, theirs, docs):
        assert record["num_tokens"] == len(reference.tok_encode(doc)) > 127
        assert record["loglikelihood"] / record["num_tokens"] == pytest.approx(their_ll / record["num_tokens"], abs=1e-4)
