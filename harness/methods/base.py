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

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        raise NotImplementedError

    def check_budget(self, inputs: MethodInputs) -> None:
        """A budget keeps at least one expert and at most all of them."""
        if not 1 <= inputs.budget <= inputs.shape.num_experts:
            raise HarnessError(
                f"--budget {inputs.budget} must be between 1 and the model's {inputs.shape.num_experts} experts"
            )


def method(name: str, **settings) -> Method:
    """The registered method ``name`` with its settings (an unknown name lists the known ones)."""
    return get(METHODS, name)(**settings)


def build_plan(name: str, inputs: MethodInputs, **settings) -> CompressionPlan:
    """Run method ``name`` on ``inputs``; the plan's metadata names the method and its settings."""
    chosen = method(name, **settings)
    chosen.check_budget(inputs)
    if chosen.needs_calibration and inputs.stats is None:
        raise HarnessError(f"method {name!r} needs calibration statistics; give it calibration data")
    plan = chosen.build(inputs)
    plan.metadata = {"method": name, "budget": inputs.budget, **settings, **dict(plan.metadata or {})}
    return plan
