"""The MoEfication recipe end to end, cached under a fingerprint of everything that shapes the result.

Layers are converted in order on calibration text (GPTQ-style sequential calibration): layer l's
router and clusters are fitted on the hidden states the already converted layers 0..l-1 produce, so
each router learns the inputs it will see. The folder is written to a temporary sibling and renamed;
``moefication.json`` inside records the recipe, its fingerprint and per-layer fit statistics, and a
folder whose fingerprint matches is reused instead of rebuilt.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.moefication.clustering import split_neurons
from harness.moefication.convert import LayerPlan, convert, dense_mlp, moe_block, moe_config, stored_down
from harness.moefication.refit import refit_down, routed_features
from harness.moefication.router import fit_router, fit_scale, routed_weights

MANIFEST = "moefication.json"
FEATURE_KINDS = ("coactivation", "weights")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the built model (and so its fingerprint)."""

    num_experts: int = 8
    top_k: int = 4
    shared: int = 256  # neurons of the shared expert
    seed: int = 0
    calib_data: str = ""
    num_samples: int = 64
    seq_len: int = 256
    router_steps: int = 200
    router_tokens: int = 8192  # calibration tokens the router is fitted on (full-batch Adam)
    router_lr: float = 1e-2
    features: str = "coactivation"  # what neurons are clustered on: co-activation or weight rows
    cluster_tokens: int = 4096  # calibration tokens whose activations make a neuron's feature row
    # ridge refit of the down projections given the routing (refit.py); strengths tried on held-out
    # tokens, relative to the mean feature energy; () keeps the constant compensation only
    refit_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)

    def check(self, intermediate_size: int) -> None:
        if self.features not in FEATURE_KINDS:
            raise HarnessError(f"--features {self.features!r} is not one of {', '.join(FEATURE_KINDS)}")
        if not 0 <= self.shared < intermediate_size:
            raise HarnessError(f"--shared {self.shared} must be in [0, {intermediate_size}) (the MLP width)")
        routed = intermediate_size - self.shared
        if self.num_experts < 1 or routed % self.num_experts:
            raise HarnessError(f"--experts {self.num_experts} must divide the {routed} routed neurons "
                               f"({intermediate_size} - --shared {self.shared})")
        if not 1 <= self.top_k <= self.num_experts:
            raise HarnessError(f"--top_k {self.top_k} must be between 1 and --experts {self.num_experts}")


def _sha(path: Path, digest) -> None:
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)


def fingerprint(recipe: Recipe, source: Path) -> str:
    """sha256 of the recipe, the source model's files, the calibration file and this package's code."""
    import transformers

    digest = hashlib.sha256()
    fields = dataclasses.asdict(recipe)
    fields["calib_data"] = Path(recipe.calib_data).name
    digest.update(json.dumps(fields, sort_keys=True).encode())
    digest.update(f"transformers {transformers.__version__} torch {torch.__version__.split('+')[0]}".encode())
    for file in sorted(source.glob("*.json")) + sorted(source.glob("*.safetensors")):
        digest.update(file.name.encode())
        _sha(file, digest)
    _sha(Path(recipe.calib_data), digest)
    for file in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


def cached(folder: Path, fp: str) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("fingerprint") == fp
    except (OSError, json.JSONDecodeError):
        return False


def calibration_ids(tokenizer, recipe: Recipe) -> torch.Tensor:
    """(samples, seq_len) token ids of the shuffled C4 documents (harness calibration reader)."""
    from harness.methods.calibration_data import corpus_samples

    data = corpus_samples(recipe.calib_data, lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
                          recipe.num_samples, recipe.seq_len, seed=recipe.seed)
    rows = [s for s in data.samples if len(s) == recipe.seq_len]
    if not rows:
        raise HarnessError(f"--calib_data {recipe.calib_data}: not one full sample of {recipe.seq_len} tokens")
    return torch.tensor(rows)


@torch.no_grad()
def plan_layer(x: torch.Tensor, gate, up, down, recipe: Recipe, layer: int, config) -> tuple[LayerPlan, torch.Tensor]:
    """Split, route and scale one MLP from its calibration inputs ``x`` (N, H); also the block."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(recipe.seed * 1000 + layer)
    perm = torch.randperm(n, generator=gen)
    act = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)  # (N, I)
    mass = act.abs() * down.norm(dim=0)
    if recipe.features == "coactivation":
        features = mass[perm[: recipe.cluster_tokens]].T
    else:
        features = torch.cat([torch.nn.functional.normalize(gate, dim=1), torch.nn.functional.normalize(up, dim=1)], 1)
    shared, experts = split_neurons(mass, recipe.num_experts, recipe.shared, seed=recipe.seed + layer, features=features)
    expert_mass = torch.stack([mass[:, ids].sum(1) for ids in experts], 1)  # (N, E)
    hold = max(1, n // 8)
    train, test = perm[hold:][: recipe.router_tokens], perm[:hold]
    with torch.enable_grad():
        torch.manual_seed(recipe.seed + layer)
        router = fit_router(x[train], expert_mass[train], steps=recipe.router_steps, lr=recipe.router_lr,
                            seed=recipe.seed + layer)
    xt, at = x[test], act[test]
    dense_out = at @ down.T
    shared_out = at[:, shared] @ down[:, shared].T
    outs = torch.stack([at[:, ids] @ down[:, ids].T for ids in experts], 1)  # (n_test, E, H)
    logits = xt @ router.T
    scale, routed_err = fit_scale(logits, outs, dense_out - shared_out, recipe.top_k)
    idx, _ = routed_weights(logits, recipe.top_k)
    oracle = torch.topk(expert_mass[test], recipe.top_k, dim=1).indices
    agree = (idx[:, :, None] == oracle[:, None, :]).any(2).float().mean()
    plan = LayerPlan(shared, experts, router, scale)
    refit = {}
    if recipe.refit_grid:
        fit = perm[hold:]
        idx_all, w_all = routed_weights(x @ (router * scale).T, recipe.top_k)
        feats = routed_features(act, shared, experts, idx_all, w_all)
        initial = stored_down(down, plan)
        before = float((feats[test] @ initial.T - dense_out).pow(2).sum() / dense_out.pow(2).sum())
        plan.down, lam, _ = refit_down(feats, act @ down.T, initial, fit, test, recipe.refit_grid)
        refit = dict(mlp_rel_err_before_refit=round(before, 4), refit_lambda=None if lam == float("inf") else lam)
    block = moe_block(config, gate, up, down, plan)
    moe_out = block(xt[None])[0]
    rel = float((moe_out - dense_out).pow(2).sum() / dense_out.pow(2).sum())
    plan.stats = dict(layer=layer, scale=scale, router_topk_vs_oracle=round(float(agree), 4),
                      routed_rel_err=round(routed_err, 4), mlp_rel_err=round(rel, 4), **refit,
                      shared_mass=round(float(mass[:, shared].sum() / mass.sum()), 4))
    return plan, block


@torch.no_grad()
def moefy(dense, ids: torch.Tensor, recipe: Recipe, log=print, batch: int = 8) -> list[LayerPlan]:
    """Layer plans for every decoder layer of ``dense`` (a Llama-like causal LM, fp32), sequentially."""
    layers = dense.model.layers
    config = moe_config(dense.config, recipe.num_experts, recipe.top_k,
                        (dense.config.intermediate_size - recipe.shared) // recipe.num_experts, recipe.shared)
    chunks = list(torch.split(ids, batch))
    hidden = [dense.model.embed_tokens(c) for c in chunks]
    positions = torch.arange(ids.shape[1])[None]
    rope = dense.model.rotary_emb(hidden[0], position_ids=positions)
    plans = []
    for number, layer in enumerate(layers):
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        hook = layer.mlp.register_forward_hook(lambda _m, args, out: seen.append((args[0], out)))
        try:
            outputs = [layer(h, position_embeddings=rope) for h in hidden]
        finally:
            hook.remove()
        x = torch.cat([s[0].reshape(-1, s[0].shape[-1]) for s in seen])
        plan, block = plan_layer(x, *dense_mlp(layer), recipe, number, config)
        # the layer's output with the MoE block in place of the dense MLP (attention is unchanged)
        hidden = [out - mlp_out + block(mlp_in) for out, (mlp_in, mlp_out) in zip(outputs, seen)]
        plans.append(plan)
        log(f"layer {number}: " + ", ".join(f"{k} {v}" for k, v in plan.stats.items() if k != "layer"))
    return plans


def folder_name(source: Path, recipe: Recipe, fp: str) -> str:
    return f"{source.name}-moe-e{recipe.num_experts}-k{recipe.top_k}-s{recipe.shared}-{fp[:10]}"


def build(source: str | Path, recipe: Recipe, out: str | Path | None = None, cache_dir: str | Path | None = None,
          log=print, force: bool = False) -> Path:
    """The MoE folder built from the dense transformers folder ``source`` (reused if current): ``out``,
    or a folder named by the recipe and its fingerprint under ``cache_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(source)
    if not (source / "config.json").is_file():
        raise HarnessError(f"source model {source} has no config.json; pass a transformers model folder")
    if not Path(recipe.calib_data).is_file():
        raise HarnessError(f"--calib_data {recipe.calib_data} not found; pass a JSONL file with a 'text' field per line")
    if (out is None) == (cache_dir is None):
        raise HarnessError("build() needs exactly one of out (a folder) or cache_dir")
    fp = fingerprint(recipe, source)
    out = Path(out) if out is not None else Path(cache_dir) / folder_name(source, recipe, fp)
    if not force and cached(out, fp):
        log(f"reusing {out} (fingerprint {fp[:12]})")
        return out
    start = time.time()
    dense = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    recipe.check(dense.config.intermediate_size)
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = calibration_ids(tokenizer, recipe)
    log(f"calibration: {ids.shape[0]} x {ids.shape[1]} tokens of {recipe.calib_data}")
    plans = moefy(dense, ids, recipe, log=log)
    moe = convert(dense, plans, recipe.top_k)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    moe.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    manifest = dict(fingerprint=fp, recipe=dataclasses.asdict(recipe), source=source.name,
                    build_seconds=round(time.time() - start, 1), layers=[p.stats for p in plans],
                    layout="qwen2_moe, norm_topk_prob=False: routed down_proj x num_experts, "
                           "shared down_proj x 2 with a zero shared_expert_gate")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log(f"built {out} in {manifest['build_seconds']} s")
    return out
