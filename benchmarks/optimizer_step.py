r"""Optimizer-step benchmark: proxopt vs optax vs torch.optim vs the bandwidth floor.

``python -m benchmarks.optimizer_step [--quick] [--json FILE]``

An Adam-type step is memory bound: it reads params, grads, ``m`` and ``v`` and
writes params, ``m`` and ``v``, i.e. 28 bytes per float32 parameter, so its
floor is ``28 * params / bandwidth``. Two trees:

* ``resnet110``: the parameter tree of the CIFAR ResNet-110 without BN
  (1,719,866 params in 111 leaves, the shapes of
  ``experiments.models.make_model("resnet110", use_bn=False)``);
* ``flat64m``: one flat vector of 64Mi float32 (``2**26``).

Candidates: ``proxopt.adamw``, ``proxopt.adamprox``, ``proxopt.adam_l2``,
``optax.adam`` + ``proxopt.proximal(l1)``, ``optax.adamw``, AdamProx with the
update-scale histogram of ``proxopt.track_update_scales`` around
its Adam part (its overhead), AdamProx with ``m`` stored in bfloat16
(``mu_dtype``: fewer bytes, different numerics), a second ``optax.adamw``
as an A/A control (identical programs; its ratio is the run's noise level),
``torch.optim.AdamW`` with ``foreach`` and
``fused`` kernels, and, on single-leaf trees, an experimental cache-blocked
AdamProx written in JAX (``benchmarks/blocked.py``, see there why). JAX steps
are ``jax.jit`` with params and optimizer state donated, grads fixed; torch
uses ``torch.set_num_threads(os.cpu_count())``. Candidates run interleaved,
the statistic is the median. The bandwidth is measured in the same run (see
:func:`benchmarks.common.bandwidth_probes`), before and after the trees;
the fastest probe sets the floor. For each JAX candidate the JSON also
records the memory passes of its compiled step read off the HLO
(:func:`hlo_traffic`): loops over parameter-sized arrays and bytes moved per
parameter, which compare candidates without timing noise.

``--json FILE`` writes (atomically, after each tree; ``--resume`` skips trees
already in FILE)::

  {"machine": {...}, "bandwidth_gbs": x, "bandwidth_probes": {...},
   "results": [{"tree", "optimizer", "median_s", "params", "roofline_fraction",
                "leaves", "reps", "q25_s", "q75_s", "state_bytes",
                "hlo_param_loops", "hlo_bytes_per_param", ...}],
   "ratios": {"adamprox_over_optax_adamw", "adamw_over_optax_adamw",
              "adamprox_over_torch_adamw", ...},   # on the largest tree
   "ratios_by_tree": {tree: {...}}}

``torch_adamw`` is the faster of the two torch variants.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxopt
from benchmarks import common

BYTES_PER_PARAM = 28  # read x, g, m, v; write x, m, v (float32)
LR, WD, L2, L1 = 1e-3, 1e-4, 5e-4, 1e-6

JAX_CANDIDATES = ("proxopt.adamw", "proxopt.adamprox", "proxopt.adam_l2",
                  "adam+proximal(l1)", "optax.adamw", "adamprox+track_update_scales",
                  "adamprox_blocked", "adamprox(mu_dtype=bf16)",
                  "optax.adamw(A/A control)")
TORCH_CANDIDATES = ("torch.AdamW(foreach)", "torch.AdamW(fused)")
ALL_CANDIDATES = JAX_CANDIDATES + TORCH_CANDIDATES


# ---------------------------------------------------------------------- trees
def resnet_param_shapes(depth: int, num_classes: int = 10,
                        bn: bool = False) -> dict[str, tuple[int, ...]]:
  """Parameter shapes of ``experiments.models.ResNet(depth)``, by tree path
  (an abstract init: shapes only, no random draws)."""
  from flax import nnx

  from experiments.models.resnet import ResNet
  model = nnx.eval_shape(lambda: ResNet(depth, num_classes, bn, rngs=nnx.Rngs(0)))
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
  return {jax.tree_util.keystr(path).removesuffix(".value"): tuple(x.shape)
          for path, x in leaves}


def make_tree(name: str, quick: bool) -> dict[str, tuple[int, ...]]:
  if name == "resnet110":
    return resnet_param_shapes(20 if quick else 110)
  if name == "flat64m":
    return {"x": (2**20 if quick else 2**26,)}
  raise ValueError(f"unknown tree {name!r}; use resnet110 or flat64m.")


def numpy_tree(shapes: dict[str, tuple[int, ...]], seed: int):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s, dtype=np.float32) * np.float32(0.05)
          for k, s in shapes.items()}


# ------------------------------------------------------------------ optimizers
def make_tx(name: str) -> optax.GradientTransformation:
  if name == "proxopt.adamw":
    return proxopt.adamw(LR, weight_decay=WD)
  if name == "proxopt.adamprox":
    return proxopt.adamprox(LR, weight_decay=WD)
  if name == "proxopt.adam_l2":
    return proxopt.adam_l2(LR, weight_decay=L2)
  if name == "adam+proximal(l1)":
    return optax.chain(optax.adam(LR), proxopt.proximal(proxopt.l1(L1), LR))
  if name in ("optax.adamw", "optax.adamw(A/A control)"):
    # The control is a second, identical optax.adamw: its ratio to the first
    # shows how far identical programs differ in this run (buffer placement,
    # neighbours, load).
    return optax.adamw(LR, weight_decay=WD)
  if name == "adamprox(mu_dtype=bf16)":
    # Not the same numerics: m in bfloat16 (2 B instead of 4 B per param).
    return proxopt.adamprox(LR, weight_decay=WD, mu_dtype=jnp.bfloat16)
  if name == "adamprox+track_update_scales":
    from proxopt import track_update_scales
    # The same chain as proxopt.adamprox, with the Adam direction histogrammed.
    return optax.chain(
        track_update_scales(optax.scale_by_adam()),
        optax.scale_by_learning_rate(LR),
        proxopt.proximal(proxopt.l2_squared(WD), LR),
    )
  raise ValueError(f"unknown optax candidate {name!r}")


def state_bytes(tx: optax.GradientTransformation, params) -> dict[str, int]:
  """Bytes of the optimizer state (without allocating it), split into
  parameter-sized buffers and the rest (step counters, histograms)."""
  shapes = jax.eval_shape(tx.init, params)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  param_shapes = {tuple(x.shape) for x in jax.tree.leaves(params)}
  big = small = 0
  for leaf in jax.tree.leaves(shapes):
    nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    if tuple(leaf.shape) in param_shapes and leaf.ndim > 0:
      big += nbytes
    else:
      small += nbytes
  return {"state_bytes": big + small, "state_param_sized_bytes": big,
          "state_other_bytes": small, "params": n_params}


_SHAPE = re.compile(r"\b(f32|f16|bf16|f64|s32|u32|s8|u8|pred)\[([0-9,]*)\]")
_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "s32": 4, "u32": 4,
             "s8": 1, "u8": 1, "pred": 1}


def hlo_traffic(tx: optax.GradientTransformation, params) -> dict[str, Any]:
  """Memory passes of the compiled, donated step, read off its HLO.

  Counts the top-level fusions (loops over memory) whose output is
  parameter-sized and the bytes each reads (array operands) and writes
  (its output), i.e. the traffic if nothing stays in cache. A fused
  optimizer moves 28 B/param; every extra loop over a parameter-sized array
  shows up here, independently of timing noise.
  """
  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        params)
  s = jax.eval_shape(tx.init, shapes)
  text = jax.jit(step, donate_argnums=(0, 1)).lower(
      shapes, s, shapes).compile().as_text()
  entry = text[text.index("\nENTRY"):]
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  min_size = min(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

  def nbytes(dtype, dims):
    n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    return n * _ITEMSIZE[dtype], n

  loops = read = written = 0
  for line in entry.splitlines():
    if " fusion(" not in line or "=" not in line:
      continue
    lhs, rhs = line.split(" fusion(", 1)
    out = _SHAPE.findall(lhs.split("=", 1)[1])
    out_bytes = [nbytes(*o) for o in out]
    if not any(n >= min_size and n > 1 for _, n in out_bytes):
      continue
    loops += 1
    written += sum(b for b, _ in out_bytes)
    args = rhs.split(")", 1)[0]
    for name in re.findall(r"%([\w.\-]+)", args):
      m = re.search(r"%" + re.escape(name) + r" = (\w+)\[([0-9,]*)\]", entry)
      if m:
        b, n = nbytes(m.group(1), m.group(2))
        if n > 1:
          read += b
  return {"hlo_param_loops": loops, "hlo_bytes_read": read,
          "hlo_bytes_written": written,
          "hlo_bytes_per_param": (read + written) / n_params}


def _jax_runner(name: str, np_params, grads) -> tuple[Callable[[], Any], dict]:
  params = jax.tree.map(jnp.asarray, np_params)
  if name == "adamprox_blocked":
    from benchmarks.blocked import blocked_adam
    (leaf_name,) = params
    init, step_fn = blocked_adam(LR, WD, kind="adamprox")

    def step(p, s, g):
      x, s = step_fn(p[leaf_name], s, g[leaf_name])
      return {leaf_name: x}, s

    opt_state = init(params[leaf_name])
    info = {"state_bytes": sum(int(x.nbytes) for x in jax.tree.leaves(opt_state))}
  else:
    tx = make_tx(name)
    info = state_bytes(tx, params)
    info.pop("params")
    info.update(hlo_traffic(tx, params))

    def step(p, s, g):
      updates, s = tx.update(g, s, p)
      return optax.apply_updates(p, updates), s

    opt_state = tx.init(params)
  # Donation lets XLA update params and moments in place instead of
  # allocating fresh outputs every step.
  jitted = jax.jit(step, donate_argnums=(0, 1))
  box = {"p": params, "s": opt_state}

  def run():
    box["p"], box["s"] = jitted(box["p"], box["s"], grads)
    jax.block_until_ready((box["p"], box["s"]))

  run.box = box
  return run, info


def _torch_runner(name: str, np_params, np_grads, threads: int):
  import torch
  torch.set_num_threads(threads)
  params = []
  for k in np_params:
    p = torch.tensor(np_params[k], requires_grad=True)
    p.grad = torch.tensor(np_grads[k])
    params.append(p)
  fused = name.endswith("(fused)")
  opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD,
                          **({"fused": True} if fused else {"foreach": True}))

  def run():
    opt.step()

  run.params = params
  return run, {}


def available(name: str, shapes) -> bool:
  if name == "adamprox_blocked":
    return len(shapes) == 1
  if name == "adamprox+track_update_scales":
    try:
      from proxopt import track_update_scales  # noqa: F401
    except ImportError:
      return False
  if name.startswith("torch"):
    try:
      import torch  # noqa: F401
    except ImportError:
      return False
  return True


def bench_tree(tree: str, names, reps: int, quick: bool, threads: int,
               bandwidth_gbs: float) -> list[dict]:
  shapes = make_tree(tree, quick)
  names = [n for n in names if available(n, shapes)]
  n_params = int(sum(np.prod(s) for s in shapes.values()))
  np_params = numpy_tree(shapes, 0)
  np_grads = numpy_tree(shapes, 1)
  grads = jax.tree.map(jnp.asarray, np_grads)
  runners, infos = {}, {}
  for n in names:
    common.log(f"[{tree}] setting up {n}")
    if n.startswith("torch"):
      runners[n], infos[n] = _torch_runner(n, np_params, np_grads, threads)
    else:
      runners[n], infos[n] = _jax_runner(n, np_params, grads)
  common.log(f"[{tree}] {n_params:,} params in {len(shapes)} leaves; "
             f"{len(names)} candidates x {reps} interleaved rounds")
  times = common.interleaved(runners, reps, warmup=2)
  floor_s = BYTES_PER_PARAM * n_params / (bandwidth_gbs * 1e9)
  rows = []
  for n in names:
    t = np.asarray(times[n])
    med = float(np.median(t))
    rows.append({
        "tree": tree, "optimizer": n, "median_s": med, "params": n_params,
        "roofline_fraction": floor_s / med, "leaves": len(shapes),
        "reps": int(len(t)), "q25_s": float(np.quantile(t, 0.25)),
        "q75_s": float(np.quantile(t, 0.75)), "min_s": float(t.min()),
        "floor_s": floor_s, **infos[n],
    })
  del runners
  gc.collect()
  return rows


def ratios_for(rows: list[dict]) -> dict[str, float]:
  med = {r["optimizer"]: r["median_s"] for r in rows}
  out = {}
  torch_names = [n for n in TORCH_CANDIDATES if n in med]
  torch_best = min((med[n] for n in torch_names), default=None)

  def put(key, a, b):
    if a is not None and b is not None:
      out[key] = a / b

  ref = med.get("optax.adamw")
  put("adamprox_over_optax_adamw", med.get("proxopt.adamprox"), ref)
  put("adamw_over_optax_adamw", med.get("proxopt.adamw"), ref)
  put("adam_l2_over_optax_adamw", med.get("proxopt.adam_l2"), ref)
  put("adam_prox_l1_over_optax_adamw", med.get("adam+proximal(l1)"), ref)
  put("adamprox_over_torch_adamw", med.get("proxopt.adamprox"), torch_best)
  put("optax_adamw_over_torch_adamw", ref, torch_best)
  put("track_update_scales_overhead",
      med.get("adamprox+track_update_scales"), med.get("proxopt.adamprox"))
  put("adamprox_blocked_over_torch_adamw", med.get("adamprox_blocked"),
      torch_best)
  put("adamprox_blocked_over_adamprox", med.get("adamprox_blocked"),
      med.get("proxopt.adamprox"))
  put("aa_control_over_optax_adamw", med.get("optax.adamw(A/A control)"), ref)
  put("adamprox_bf16_mu_over_adamprox", med.get("adamprox(mu_dtype=bf16)"),
      med.get("proxopt.adamprox"))
  if torch_names:
    out["torch_adamw_variant"] = min(torch_names, key=med.get)
  return out


def print_table(out: dict) -> None:
  print(f"bandwidth floor {out['bandwidth_gbs']:.1f} GB/s "
        f"({out.get('bandwidth_source', '?')}); 28 B/param")
  print(f"{'tree':10s} {'optimizer':30s} {'median ms':>10s} {'floor %':>8s} "
        f"{'state B/param':>14s}")
  for r in out["results"]:
    sb = r.get("state_bytes")
    sbp = f"{sb / r['params']:.2f}" if sb is not None else "-"
    print(f"{r['tree']:10s} {r['optimizer']:30s} {r['median_s'] * 1e3:10.2f} "
          f"{100 * r['roofline_fraction']:7.1f}% {sbp:>14s}")
  for tree, rat in out.get("ratios_by_tree", {}).items():
    print(f"[{tree}] " + ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in rat.items()))


def parse_args(argv=None):
  ap = argparse.ArgumentParser(
      prog="python -m benchmarks.optimizer_step",
      description="Optimizer step vs optax, torch.optim and the memory "
      "bandwidth floor (interleaved medians).")
  ap.add_argument("--quick", action="store_true",
                  help="tiny sizes and few repetitions (smoke test)")
  ap.add_argument("--json", metavar="FILE", help="write results JSON here")
  ap.add_argument("--resume", action="store_true",
                  help="keep trees already in --json FILE")
  ap.add_argument("--trees", default="resnet110,flat64m",
                  help="comma-separated: resnet110, flat64m")
  ap.add_argument("--candidates", default=",".join(ALL_CANDIDATES),
                  help="comma-separated subset of: " + ", ".join(ALL_CANDIDATES))
  ap.add_argument("--reps", type=int, default=None,
                  help="interleaved rounds per tree (default 40 for resnet110,"
                  " 15 for flat64m; 3 with --quick)")
  ap.add_argument("--threads", type=int, default=os.cpu_count(),
                  help="torch threads (default: all cores)")
  args = ap.parse_args(argv)
  args.trees = [t for t in args.trees.split(",") if t]
  for t in args.trees:
    if t not in ("resnet110", "flat64m"):
      ap.error(f"--trees: unknown tree {t!r}; use resnet110 and/or flat64m")
  args.candidates = [c for c in args.candidates.split(",") if c]
  for c in args.candidates:
    if c not in ALL_CANDIDATES:
      ap.error(f"--candidates: unknown {c!r}; valid: {', '.join(ALL_CANDIDATES)}")
  if args.reps is not None and args.reps < 1:
    ap.error("--reps must be >= 1")
  if args.resume and not args.json:
    ap.error("--resume needs --json FILE")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  prev = common.load_json(args.json) if args.resume else None
  out = prev or {"machine": common.machine_info(
      "python -m benchmarks.optimizer_step " + " ".join(argv or sys.argv[1:]))}
  out.setdefault("results", [])
  out.setdefault("ratios_by_tree", {})
  done = {r["tree"] for r in out["results"]}
  bw_n = 2**20 if args.quick else 2**25  # 128 MiB arrays: far beyond caches
  bw_reps = 3 if args.quick else 15
  probes = out.get("bandwidth_probes_runs", [])
  if not prev:
    common.log("measuring memory bandwidth ...")
    probes.append(common.bandwidth_probes(bw_n, bw_reps, args.threads))
  out["bandwidth_probes_runs"] = probes

  def set_floor():
    best = {}
    for run in probes:
      for k, v in run.items():
        best[k] = max(best.get(k, 0.0), v)
    src = max(best, key=best.get)
    out["bandwidth_probes"] = best
    out["bandwidth_gbs"] = best[src]
    out["bandwidth_source"] = src

  set_floor()
  for tree in args.trees:
    if tree in done:
      common.log(f"[{tree}] already in {args.json}; skipping (--resume)")
      continue
    reps = args.reps or (3 if args.quick else
                         (40 if tree == "resnet110" else 15))
    rows = bench_tree(tree, args.candidates, reps, args.quick, args.threads,
                      out["bandwidth_gbs"])
    out["results"] += rows
    out["ratios_by_tree"][tree] = ratios_for(rows)
    if args.json:
      common.write_json_atomic(args.json, out)
  common.log("measuring memory bandwidth again ...")
  probes.append(common.bandwidth_probes(bw_n, bw_reps, args.threads))
  set_floor()
  # Fractions against the final floor (the best rate seen in the whole run).
  for r in out["results"]:
    r["floor_s"] = BYTES_PER_PARAM * r["params"] / (out["bandwidth_gbs"] * 1e9)
    r["roofline_fraction"] = r["floor_s"] / r["median_s"]
  trees = [t for t in ("flat64m", "resnet110") if t in out["ratios_by_tree"]]
  out["ratios"] = dict(out["ratios_by_tree"][trees[0]]) if trees else {}
  out["ratios_tree"] = trees[0] if trees else None
  out["machine"]["loadavg_end"] = list(os.getloadavg())
  if args.json:
    common.write_json_atomic(args.json, out)
  print_table(out)
  return out


if __name__ == "__main__":
  main()
