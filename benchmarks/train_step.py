r"""Train-step benchmark: the experiments' JAX step vs the same model in PyTorch.

``python -m benchmarks.train_step [--quick] [--json FILE]``

For CIFAR ResNet-20/56/110, with and without BatchNorm, at batch 128: one
train step (forward, softmax cross-entropy, backward, optimizer update) of
``experiments.kernels.train_step.make_train_step`` (Flax NNX model from
``experiments.models``, state donated, ``impl`` as given; ``auto`` is the
step the experiments use) against the same network, init scheme and
optimizer in PyTorch (``benchmarks/torch_peer.py``, ``torch.set_num_threads``
= all cores), in both of PyTorch's memory formats: NCHW (``torch_step_s``)
and channels-last (``torch_cl_step_s``; oneDNN's convolutions are faster on
it here, and it is the layout of the JAX step). ``jax_over_torch_best`` is
the JAX step over the fastest PyTorch configuration timed. ``conv`` is the
JAX step's convolution kernels (``experiments.kernels.train_step.make_train_step(conv=)``).
Both sides get the same fixed batch; augmentation is off on the
JAX side (the PyTorch peer gets pre-normalised tensors, as a DataLoader would
hand it), so both time the model and the optimizer only. JAX and PyTorch
steps run interleaved; the statistic is the median. ``--also-threads 1``
adds PyTorch with other thread counts to the same rounds (on a shared,
loaded CPU, torch's OpenMP barriers can make all cores slower than one).
``compile_s`` is the first JAX call (trace + compile + one step) minus the
median step. ``--precision bfloat16`` times both sides in mixed precision:
the JAX step with ``precision="bfloat16"`` (bfloat16 convolutions and
activations, float32 weights, optimizer state and loss; ``--convs`` as in
float32, oneDNN having bfloat16 kernels too) against PyTorch under
``torch.autocast("cpu", dtype=torch.bfloat16)`` around forward and loss,
with float32 master weights (``benchmarks/torch_peer.py``). ``--batch-norms``
(like ``--convs``) chooses the JAX step's train-mode BatchNorm
(``make_train_step(batch_norm=)``: auto, onednn, flax), e.g. ``--bn on
--convs onednn --batch-norms flax,onednn`` compares Flax's and oneDNN's in
one run; each row records ``batch_norm`` and ``batch_norm_resolved``.
``--relus`` likewise chooses who computes the ReLUs and residual adds of the
models without BatchNorm (``make_train_step(relu=)``: auto, onednn (fused
into the convolutions), xla), e.g. ``--bn off --relus onednn,xla``; rows
record ``relu`` and ``relu_resolved``. Each configuration runs in a fresh
process (nothing of the previous ones on its heap), and both steps of it in
that one process, with glibc keeping freed memory
(``experiments/kernels/host_memory.py``; rows record ``host_memory``).

``--json FILE`` writes (atomically after every configuration; ``--resume``
skips configurations already in FILE)::

  {"machine": {...},
   "results": [{"model": "resnet20", "bn": false, "batch": 128, "impl": "auto",
                "conv": "auto", "conv_resolved": "onednn", "batch_norm": "auto",
                "batch_norm_resolved": "onednn", "relu": "auto",
                "relu_resolved": "onednn", "precision": "float32",
                "jax_step_s", "torch_step_s", "compile_s", "jax_over_torch",
                "torch_step_s_by_threads", "torch_cl_step_s_by_threads",
                "torch_best_step_s", "torch_best_config", "jax_over_torch_best",
                "jax_images_per_s", "torch_images_per_s", "reps", ...}]}
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import common
from experiments.configs.default import BATCH_NORMS, CONVS, IMPLS, PRECISIONS, RELUS
from experiments.kernels import host_memory

OPTIMIZERS = ("adamw", "adamprox", "adam_l2")
LR, WD, L2 = 1e-3, 1e-4, 5e-4


def _jax_tx(name: str):
  import proxopt
  if name == "adamw":
    return proxopt.adamw(LR, weight_decay=WD)
  if name == "adamprox":
    return proxopt.adamprox(LR, weight_decay=WD)
  return proxopt.adam_l2(LR, weight_decay=L2)


def _torch_opt(model, name: str):
  from benchmarks import torch_peer
  # torch has no AdamProx; its step costs the same as AdamW's (one fused
  # elementwise pass), so AdamW stands in for it.
  if name == "adam_l2":
    return torch_peer.make_optimizer(model, "adam_l2", LR, L2, impl="foreach")
  return torch_peer.make_optimizer(model, "adamw", LR, WD, impl="foreach")


def build_steps(depth: int, bn: bool, batch: int, impl: str, optimizer: str,
                conv: str = "auto", precision: str = "float32",
                batch_norm: str = "auto", relu: str = "auto") -> dict:
  """The two sides of one configuration, built but not timed.

  Returns ``{"jax": f, "jax_step": the make_train_step function (its resolved
  impl/conv/batch_norm/precision), "torch": {"nchw": f, "cl": f}, "torch_models": the
  two PyTorch models}``; every ``f()``
  takes one step on the fixed batch (the JAX one waits for its result, as
  the timing needs) and returns its loss.
  """
  import jax
  import torch
  from experiments.models.resnet import ResNet
  from experiments.input_pipeline import normalize
  from experiments.kernels.train_step import create_train_state, make_train_step
  from flax import nnx

  from benchmarks import torch_peer

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (batch,)).astype(np.int32)

  model = ResNet(depth, 10, bn, rngs=nnx.Rngs(0))
  tx = _jax_tx(optimizer)
  step = make_train_step(model, tx, augment=False, impl=impl, conv=conv,
                         precision=precision, batch_norm=batch_norm, relu=relu)
  box = {"state": create_train_state(model, tx, seed=0)}
  images_dev, labels_dev = jax.device_put(images), jax.device_put(labels)

  def jax_step():
    box["state"], metrics = step(box["state"], images_dev, labels_dev)
    jax.block_until_ready((box["state"], metrics))
    return metrics["loss"]

  # The same images, normalised by the JAX step's own function, in NCHW.
  x = np.asarray(normalize(jax.numpy.asarray(images))).transpose(0, 3, 1, 2)
  tlabels = torch.from_numpy(labels.astype(np.int64))
  tsteps, tmodels = {}, {}
  for fmt, memory_format in (("nchw", torch.contiguous_format),
                             ("cl", torch.channels_last)):
    # One model and optimizer per format, from the same seed.
    tmodel = torch_peer.make_resnet(depth, bn=bn, seed=0).to(
        memory_format=memory_format)
    timages = torch.from_numpy(np.ascontiguousarray(x)).contiguous(
        memory_format=memory_format)
    tstep = torch_peer.make_train_step(tmodel, _torch_opt(tmodel, optimizer),
                                       precision)
    tsteps[fmt] = functools.partial(tstep, timages, tlabels)
    tmodels[fmt] = tmodel
  return {"jax": jax_step, "jax_step": step, "torch": tsteps,
          "torch_models": tmodels}


def bench_config(depth: int, bn: bool, batch: int, impl: str, optimizer: str,
                 reps: int, threads: int, extra_threads=(), conv: str = "auto",
                 precision: str = "float32", batch_norm: str = "auto",
                 relu: str = "auto") -> dict:
  import torch

  torch.set_num_threads(threads)
  steps = build_steps(depth, bn, batch, impl, optimizer, conv, precision,
                      batch_norm, relu)
  jax_step, step = steps["jax"], steps["jax_step"]

  t0 = time.perf_counter()
  jax_step()
  first_call = time.perf_counter() - t0

  def torch_step(fmt, n):
    tstep = steps["torch"][fmt]

    def run():
      torch.set_num_threads(n)
      tstep()
    return run

  cands = {"jax": jax_step}
  for n in [threads, *[t for t in extra_threads if t != threads]]:
    cands[f"torch_nchw_{n}"] = torch_step("nchw", n)
    cands[f"torch_cl_{n}"] = torch_step("cl", n)
  times = common.interleaved(cands, reps, warmup=1, progress=False)
  torch.set_num_threads(threads)
  med = {k: common.median(v) for k, v in times.items()}
  jm, tm = med["jax"], med[f"torch_nchw_{threads}"]
  by_threads = {k.split("_")[-1]: v for k, v in med.items()
                if k.startswith("torch_nchw_")}
  cl_by_threads = {k.split("_")[-1]: v for k, v in med.items()
                   if k.startswith("torch_cl_")}
  best = min((v, k[len("torch_"):]) for k, v in med.items() if k != "jax")
  return {
      "model": f"resnet{depth}", "bn": bn, "batch": batch,
      "impl": impl, "impl_resolved": getattr(step, "impl", impl),
      "conv": conv, "conv_resolved": getattr(step, "conv", conv),
      "batch_norm": batch_norm,
      "batch_norm_resolved": getattr(step, "batch_norm", batch_norm),
      "relu": relu, "relu_resolved": getattr(step, "relu", relu),
      "precision": precision,
      "optimizer": optimizer, "jax_step_s": jm, "torch_step_s": tm,
      "torch_threads": threads, "torch_step_s_by_threads": by_threads,
      "torch_cl_step_s": med[f"torch_cl_{threads}"],
      "torch_cl_step_s_by_threads": cl_by_threads,
      "torch_best_step_s": best[0], "torch_best_config": best[1],
      "jax_over_torch_best": jm / best[0],
      "compile_s": max(first_call - jm, 0.0), "first_call_s": first_call,
      "jax_over_torch": jm / tm, "jax_images_per_s": batch / jm,
      "torch_images_per_s": batch / tm, "reps": reps,
      "jax_q25_s": float(np.quantile(times["jax"], 0.25)),
      "jax_q75_s": float(np.quantile(times["jax"], 0.75)),
      "torch_q25_s": float(np.quantile(times[f"torch_nchw_{threads}"], 0.25)),
      "torch_q75_s": float(np.quantile(times[f"torch_nchw_{threads}"], 0.75)),
      "loadavg": list(os.getloadavg()),
      # glibc keeping freed memory (experiments/kernels/host_memory.py): both
      # steps run in this process, so both get the same allocator.
      "host_memory": host_memory.status(),
  }


def _key(r):
  return (r["model"], r["bn"], r["batch"], r["impl"], r.get("conv", "auto"),
          r["optimizer"], r.get("precision", "float32"),
          r.get("batch_norm", "auto"), r.get("relu", "auto"))


def print_table(out: dict) -> None:
  print(f"{'model':10s} {'bn':5s} {'impl/conv/bn':29s} {'jax s':>8s} "
        f"{'best torch s':>12s} {'jax/best':>8s} {'jax img/s':>10s} "
        f"{'compile s':>9s}  torch s (nchw | channels-last) by threads")
  for r in out["results"]:
    impl = f"{r['impl']}={r['impl_resolved']}/{r.get('conv_resolved', 'xla')}"
    if r["bn"]:
      impl += f"/{r.get('batch_norm_resolved', 'flax')}"
    if r.get("relu_resolved", "xla") == "onednn":
      impl += "/fused relu"
    if r.get("precision", "float32") != "float32":
      impl += "/bf16"
    print(f"{r['model']:10s} {str(r['bn']):5s} {impl:29s} "
          f"{r['jax_step_s']:8.3f} {r['torch_best_step_s']:12.3f} "
          f"{r['jax_over_torch_best']:8.2f} {r['jax_images_per_s']:10.1f} "
          f"{r['compile_s']:9.2f}  "
          + " ".join(f"{k}t={v:.3f}" for k, v in
                     r.get("torch_step_s_by_threads", {}).items()) + " | "
          + " ".join(f"{k}t={v:.3f}" for k, v in
                     r.get("torch_cl_step_s_by_threads", {}).items()))


def parse_args(argv=None):
  ap = argparse.ArgumentParser(
      prog="python -m benchmarks.train_step",
      description="The experiments' JAX train step vs the same model and "
      "optimizer in PyTorch (interleaved medians).")
  ap.add_argument("--quick", action="store_true",
                  help="ResNet-8 at batch 8, 2 rounds (smoke test)")
  ap.add_argument("--json", metavar="FILE", help="write results JSON here")
  ap.add_argument("--resume", action="store_true",
                  help="keep configurations already in --json FILE")
  ap.add_argument("--depths", default="20,56,110",
                  help="comma-separated ResNet depths (6n+2)")
  ap.add_argument("--bn", default="off,on",
                  help="comma-separated: off, on")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--impls", default="auto",
                  help="comma-separated experiments.kernels.train_step impls "
                  "(auto, plain, nofusion, blockwise)")
  ap.add_argument("--convs", default="auto",
                  help="comma-separated convolution kernels of the JAX step "
                  "(auto, xla, onednn)")
  ap.add_argument("--batch-norms", default="auto",
                  help="comma-separated train-mode BatchNorm of the JAX step "
                  "(auto, onednn, flax); with --bn on, e.g. flax,onednn")
  ap.add_argument("--relus", default="auto",
                  help="comma-separated ReLU/residual-add kernels of the JAX "
                  "step for models without BN (auto, onednn, xla); with "
                  "--bn off, e.g. onednn,xla")
  ap.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
  ap.add_argument("--precision", default="float32",
                  choices=PRECISIONS,
                  help="float32 (default), or bfloat16 mixed precision on "
                  "both sides: the JAX step's precision='bfloat16' (with "
                  "--convs' kernels) vs torch.autocast(bfloat16) with float32 "
                  "master weights")
  ap.add_argument("--reps", type=int, default=None,
                  help="interleaved rounds (default 5; 2 with --quick)")
  ap.add_argument("--threads", type=int, default=os.cpu_count(),
                  help="torch threads for torch_step_s (default: all cores)")
  ap.add_argument("--also-threads", default="",
                  help="comma-separated extra torch thread counts, timed in "
                  "the same interleaved rounds (torch_step_s_by_threads); on a "
                  "loaded machine 1 thread can beat all cores")
  args = ap.parse_args(argv)
  try:
    args.also_threads = [int(t) for t in args.also_threads.split(",") if t]
  except ValueError:
    ap.error(f"--also-threads: expected integers, got {args.also_threads!r}")
  if args.threads < 1 or any(t < 1 for t in args.also_threads):
    ap.error("--threads/--also-threads must be >= 1")
  try:
    args.depths = [int(d) for d in args.depths.split(",") if d]
  except ValueError:
    ap.error(f"--depths: expected integers like 20,56,110; got {args.depths!r}")
  for d in args.depths:
    if d < 8 or (d - 2) % 6:
      ap.error(f"--depths: {d} is not 6n+2 (e.g. 20, 56, 110)")
  bns = [b for b in args.bn.split(",") if b]
  for b in bns:
    if b not in ("off", "on"):
      ap.error(f"--bn: use off and/or on, got {b!r}")
  args.bn = [b == "on" for b in bns]
  # The step's own choices (experiments/configs/default.py), one comma-separated list each.
  for flag, valid in (("impls", IMPLS), ("convs", CONVS),
                      ("batch_norms", BATCH_NORMS), ("relus", RELUS)):
    values = [v for v in getattr(args, flag).split(",") if v]
    for v in values:
      if v not in valid:
        ap.error(f"--{flag.replace('_', '-')}: unknown {v!r}; valid: {', '.join(valid)}")
    setattr(args, flag, values)
  if args.batch < 1:
    ap.error("--batch must be >= 1")
  if args.reps is not None and args.reps < 1:
    ap.error("--reps must be >= 1")
  if args.resume and not args.json:
    ap.error("--resume needs --json FILE")
  if args.quick:
    args.depths, args.batch = [8], 8
  return args


def _bench_in_fresh_process(config: dict) -> dict:
  """:func:`bench_config` in a new Python process (this module with
  ``--one-config``), which starts by keeping freed memory
  (``experiments/kernels/host_memory.py``) and holds nothing of the
  configurations before it: in one long process the heap those left behind
  made the later steps slower and noisier (ResNet-110 BN after ten other
  configurations: 0.96 s, interquartile range 0.89-1.03 s; alone: 0.63 s)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_step", "--one-config",
       json.dumps(config)], cwd=root, stdout=subprocess.PIPE, text=True)
  if proc.returncode:
    raise RuntimeError(f"benchmarks.train_step: the configuration {config} "
                       f"failed (exit {proc.returncode}; its error is above).")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
  if argv is None:
    argv = sys.argv[1:]
  if argv[:1] == ["--one-config"]:  # a child of _bench_in_fresh_process
    row = bench_config(**json.loads(argv[1]))
    print(json.dumps(row), flush=True)
    return row
  args = parse_args(argv)
  prev = common.load_json(args.json) if args.resume else None
  command = "python -m benchmarks.train_step " + " ".join(argv or sys.argv[1:])
  out = prev or {"machine": common.machine_info(command)}
  if prev:  # the note lists every command that added rows to the file
    out["machine"]["note"] = f"{out['machine'].get('note', '')}; then {command}"
  out.setdefault("results", [])
  done = {_key(r) for r in out["results"]}
  reps = args.reps or (2 if args.quick else 5)
  # A model without BatchNorm has no batch_norm choice, and one with it no
  # fused ReLU: time each once (with the first --batch-norms / --relus
  # value) rather than once per value.
  configs = [(d, bn, impl, conv, bnorm, relu) for d in args.depths
             for bn in args.bn for impl in args.impls for conv in args.convs
             for bnorm in args.batch_norms if bn or bnorm == args.batch_norms[0]
             for relu in args.relus if not bn or relu == args.relus[0]]
  for i, (d, bn, impl, conv, bnorm, relu) in enumerate(configs):
    key = (f"resnet{d}", bn, args.batch, impl, conv, args.optimizer,
           args.precision, bnorm, relu)
    if key in done:
      common.log(f"[{i + 1}/{len(configs)}] {key} already done; skipping")
      continue
    common.log(f"[{i + 1}/{len(configs)}] resnet{d} bn={bn} impl={impl} "
               f"conv={conv} batch_norm={bnorm} relu={relu} precision={args.precision} "
               f"batch={args.batch}: "
               f"{reps} interleaved rounds ...")
    row = _bench_in_fresh_process(dict(
        depth=d, bn=bn, batch=args.batch, impl=impl, optimizer=args.optimizer,
        reps=reps, threads=args.threads, extra_threads=args.also_threads,
        conv=conv, precision=args.precision, batch_norm=bnorm, relu=relu))
    common.log(f"    jax {row['jax_step_s']:.3f} s, best torch "
               f"{row['torch_best_step_s']:.3f} s ({row['torch_best_config']}), "
               f"ratio {row['jax_over_torch_best']:.2f}")
    out["results"].append(row)
    if args.json:
      common.write_json_atomic(args.json, out)
  out["machine"]["loadavg_end"] = list(os.getloadavg())
  if args.json:
    common.write_json_atomic(args.json, out)
  print_table(out)
  return out


if __name__ == "__main__":
  # Before the first JAX computation (experiments/kernels/host_memory.py):
  # the step's scratch buffer is then reused, not re-faulted every step.
  host_memory.keep_freed_memory()
  main()
