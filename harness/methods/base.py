"""The interface every compression method implements, and how a method is looked up and run.

    @METHODS.register_module(name="my_method")
    class MyMethod(Method):
        needs_calibration = True          # the runner gathers CalibrationStats first
        def build(self, inputs: MethodInputs) -> CompressionPlan: ...

``MethodInputs`` carries the model's shape (decoder layers, MoE layers, experts, top-k), the budget,
the seed, and the calibration statistics when the method asked for them. Settings from the method's
config file arrive as constructor keyword arguments.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.compress.adapters import resolve
from harness.compress.plan import CompressionPlan
from harness.errors import HarnessError
from harness.registry import METHODS, get


@dataclass(frozen=True)
class ModelShape:
    """What a method needs to know about the model it compresses."""

    num_layers: int  # decoder layers
    moe_layers: tuple[int, ...]  # decoder-layer indices of the MoE layers
    num_experts: int  # routed experts per MoE layer
    top_k: int  # experts a token is routed to

    @classmethod
    def of(cls, model) -> "ModelShape":
        moe = resolve(model)  # the uncompressed facts, even while a plan is applied
        return cls(moe.num_layers, tuple(moe.moe_layers), moe.num_experts, moe.top_k)


@dataclass
class MethodInputs:
    shape: ModelShape
    budget: int | None  # experts kept per MoE layer (None for methods that drop layers or blocks)
    seed: int = 0
    stats: object | None = None  # harness.methods.calibration.CalibrationStats, when needs_calibration
    # the uncompressed loaded transformers model, for methods that read expert weights or rerun it
    model: object | None = None
    samples: list | None = None  # the calibration token samples (NAEE's progressive mode reruns them)
    drop_n: int | None = None  # layers / blocks to drop (Layer Drop, Block Drop)


class Method:
    """Base class of the registered methods (see the module docstring)."""

    needs_calibration = False
    needs_budget = True  # False for methods that drop whole layers or blocks (they take drop_n)
    needs_drop_n = False  # True for methods that drop whole layers or blocks
    needs_experts = True  # the model must have MoE layers

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        raise NotImplementedError

    def check(self, inputs: MethodInputs) -> None:
        """Refuse inputs the method cannot use (called before calibration and before any weight changes)."""
        if self.needs_experts and not inputs.shape.moe_layers:
            raise HarnessError(f"{type(self).__name__} compresses experts but the model has no MoE layers; "
                               "use a Mixture-of-Experts model or block_drop")
        if self.needs_budget:
            self.check_budget(inputs)

    def check_budget(self, inputs: MethodInputs) -> None:
        """A budget keeps at least the model's top-k experts and fewer than all E."""
        shape = inputs.shape
        if inputs.budget is None:
            raise HarnessError(f"{type(self).__name__} needs --budget B (experts kept per MoE layer)")
        if not shape.top_k <= inputs.budget < shape.num_experts:
            raise HarnessError(
                f"--budget {inputs.budget} must be at least the model's top-k ({shape.top_k}) and below its "
                f"{shape.num_experts} experts"
            )


def method(name: str, **settings) -> Method:
    """The registered method ``name`` with its settings (an unknown name lists the known ones)."""
    return get(METHODS, name)(**settings)


def build_plan(name: str, inputs: MethodInputs, **settings) -> CompressionPlan:
    """Run method ``name`` on ``inputs``; the plan's metadata names the method and its settings."""
    chosen = method(name, **settings)
    chosen.check(inputs)
    if chosen.needs_calibration and inputs.stats is None:
        raise HarnessError(f"method {name!r} needs calibration statistics; give it calibration data")
    plan = chosen.build(inputs)
    sizes = {key: value for key, value in (("budget", inputs.budget), ("drop_n", inputs.drop_n)) if value is not None}
    plan.metadata = {"method": name, **sizes, **settings, **dict(plan.metadata or {})}
    return plan
