"""Random pruning (EEP's baseline): per weight group, B of the E experts uniformly without
replacement, from a seeded generator; ``groups`` as the search's (4, 32, 'layer', ...)."""
from __future__ import annotations

import random as _random

from harness.compress.plan import CompressionPlan
from harness.methods.base import Method, MethodInputs
from harness.registry import METHODS
from harness.search.evolution import random_pruning
from harness.search.space import PlanSpace


def run_rng(seed: int, run: int = 0) -> _random.Random:
    """The generator of random run ``run`` under ``seed`` (one stream per run)."""
    return _random.Random(seed * 1_000_003 + run)


@METHODS.register_module(name="random")
class RandomPruning(Method):
    def __init__(self, groups="4", run: int = 0):
        self.groups = groups
        self.run = int(run)

    def build(self, inputs: MethodInputs) -> CompressionPlan:
        shape = inputs.shape
        space = PlanSpace.for_model(list(shape.moe_layers), shape.num_layers, shape.num_experts, inputs.budget,
                                    self.groups)
        candidate = random_pruning(space, run_rng(inputs.seed, self.run))
        return space.to_plan(candidate, metadata={"seed": inputs.seed, "run": self.run, "groups": str(self.groups)})
