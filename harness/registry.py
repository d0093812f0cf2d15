"""Registries that map the ``type`` names used in config files to code.

Each registry holds one kind of component. Configs name components by their registered string
(``dict(type='GenInferencer', ...)``); ``build`` turns such a dict into an object and reports an
unknown name as a one-line error listing the names that exist.
"""
from __future__ import annotations

import functools
from typing import Any

from mmengine.registry import Registry

from harness.errors import HarnessError

# fn(path, **kwargs) -> list[dict] | dict[split, list[dict]]; one loader per file-format family.
LOADERS = Registry("dataset loader", scope="harness")
# fn(row: dict, **kwargs) -> dict; applied to every row before templating (harness/openicl/transforms.py)
ROW_TRANSFORMS = Registry("row transform", scope="harness")
# fn(rows, **kwargs) -> rows; applied to references before scoring (e.g. gsm8k "#### N" -> "N").
DATASET_POSTPROCESSORS = Registry("dataset post-processor", scope="harness")
# fn(text: str, **kwargs) -> str; applied to each prediction before scoring.
POSTPROCESSORS = Registry("post-processor", scope="harness")
# class with .score(predictions, references) -> dict of percentages.
EVALUATORS = Registry("evaluator", scope="harness")
RETRIEVERS = Registry("retriever", scope="harness")
INFERENCERS = Registry("inferencer", scope="harness")
MODELS = Registry("model", scope="harness")
# class Method with .build(MethodInputs) -> CompressionPlan (harness/methods/base.py)
METHODS = Registry("compression method", scope="harness")
# fn(space, settings, ledger, fitness, on_result) -> {slot: record} (harness/search/__init__.py)
SEARCHES = Registry("search", scope="harness")


def get(registry: Registry, name: str) -> Any:
    """Return the object registered under ``name`` or raise a one-line HarnessError."""
    _import_builtin_components()
    if not isinstance(name, str):
        return name  # a class or function given directly in a python config
    obj = registry.get(name)
    if obj is None:
        known = ", ".join(sorted(registry.module_dict))
        raise HarnessError(f"unknown {registry.name} type {name!r}; registered: {known}")
    return obj


def build(registry: Registry, cfg: dict) -> Any:
    """Instantiate ``cfg['type']`` with the remaining keys."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise HarnessError(f"a {registry.name} config must be a dict with a 'type' key, got {cfg!r}")
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    return get(registry, cfg["type"])(**kwargs)


def get_function(registry: Registry, cfg: dict | str | None):
    """Resolve a function-type component (``dict(type=name, **kwargs)`` or a bare name) to a callable."""
    if cfg is None:
        return None
    if isinstance(cfg, str):
        return get(registry, cfg)
    fn = get(registry, cfg["type"])
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    return functools.partial(fn, **kwargs) if kwargs else fn


@functools.cache
def _import_builtin_components() -> None:
    """Import the modules whose decorators fill the registries (once, lazily, to avoid cycles)."""
    import importlib
    import pkgutil

    import harness

    for package in ("harness.datasets", "harness.openicl", "harness.models", "harness.methods", "harness.search"):
        try:
            module = importlib.import_module(package)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
            importlib.import_module(info.name)
    del harness
