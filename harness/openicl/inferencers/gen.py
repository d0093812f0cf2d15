"""Generation inferencer: one generated continuation per item."""
from __future__ import annotations

from harness.io import PredictionStore
from harness.models.api import GenerationRequest
from harness.openicl.inferencers.base import Inferencer, PromptInputs, fingerprint, progress
from harness.registry import INFERENCERS


@INFERENCERS.register_module(name="GenInferencer")
class GenInferencer(Inferencer):
    """Generate with the model's settings unless the config overrides them (protocol precedence:
    an inferencer's max_out_len / batch_size / min_out_len win over the model config's)."""

    mode = "gen"

    def __init__(
        self,
        max_out_len: int | None = None,
        min_out_len: int | None = None,
        batch_size: int | None = None,
        stop_strings: list[str] | None = None,
        generation_kwargs: dict | None = None,
    ):
        super().__init__(batch_size)
        self.max_out_len = max_out_len
        self.min_out_len = min_out_len
        self.stop_strings = stop_strings
        self.generation_kwargs = dict(generation_kwargs or {})

    def build_items(self, inputs: PromptInputs) -> list[str]:
        """The generation prompt of every item: template, examples, the model's meta template."""
        return [inputs.render(inputs.template.render(row, examples), "gen")
                for row, examples in zip(inputs.rows, inputs.examples)]

    def settings(self, model) -> dict:
        return dict(
            max_out_len=self.max_out_len or model.max_out_len,
            min_out_len=self.min_out_len,
            stop_strings=model.stop_strings if self.stop_strings is None else self.stop_strings,
            generation_kwargs=self.generation_kwargs,
        )

    def fingerprint(self, model, prompts: list[str]) -> str:
        return fingerprint("gen", model.identity, self.settings(model), prompts)

    def requests(self, model, prompts: list[str]) -> list[GenerationRequest]:
        settings = self.settings(model)

        def build(prompt: str) -> GenerationRequest:
            return GenerationRequest(model.encode_prompt(prompt, settings["max_out_len"]), settings["max_out_len"],
                                     tuple(settings["stop_strings"] or ()), settings["min_out_len"],
                                     dict(settings["generation_kwargs"]))

        return self.cached_requests(model, prompts, build, repr(settings))

    def infer(self, model, prompts: list[str], store: PredictionStore, desc: str = "", select=None) -> None:
        """Generate for every prompt not yet in ``store``; records hold origin_prompt and prediction."""
        requests = self.requests(model, prompts)
        todo, total = self.unfinished([len(r.tokens) for r in requests], store, select)
        on_batch, bar = progress(store, todo, total, desc,
                                 lambda i, text: {"origin_prompt": prompts[i], "prediction": text})
        with bar:
            model.generate([requests[i] for i in todo], on_batch=on_batch, batch_size=self.batch_size)
