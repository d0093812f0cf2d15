"""Compression methods: calibration statistics (and the model's shape) in, a CompressionPlan out.

A method is one module here, registered in ``harness.registry.METHODS`` by name. It knows nothing
about datasets, files or the task system: ``harness/runner.py`` calibrates, calls it, saves the
plan and evaluates it. See ``base.py`` for the interface.
"""
from harness.methods.base import Method, MethodInputs, ModelShape, build_plan

__all__ = ["Method", "MethodInputs", "ModelShape", "build_plan"]
