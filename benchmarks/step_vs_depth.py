"""Step time and compile time per ResNet depth, every step implementation vs PyTorch.

Run as ``python -m benchmarks.step_vs_depth`` (see ``--help``). For
each model (depth, BN on/off) it builds one train step per implementation
(``experiments.kernels.train_step``) and the PyTorch peer (``benchmarks.torch_peer``, same
network, AdamW, with 1 and with 2 intra-op threads, in NCHW and in
channels-last memory format), then times them
interleaved (A B C A B C ...) on one fixed random batch, so that load from other
processes hits all candidates alike. Reported per candidate: median and minimum seconds per step,
and the compile time (first call minus the median step). The machine's load
average is recorded with every model because timings on a shared machine are
only comparable within one run.

Results are written atomically to a JSON file after every model and a rerun
skips models already measured with the same settings (resume after a kill);
``--figure`` draws step time and compile time against depth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

DEFAULT_OUT = "docs/results/step_vs_depth.json"
DEFAULT_FIGURE = "docs/figures/step_vs_depth.png"


def _atomic_write_json(path: str, obj: Any) -> None:
  from experiments.files import write_json
  write_json(path, obj, indent=1, sort_keys=False)


def _key(depth: int, bn: bool) -> str:
  return f"resnet{depth}-{'bn' if bn else 'nobn'}"


def measure_model(depth: int, bn: bool, impls: list[str], batch: int,
                  reps: int, torch_threads: list[int], log=print) -> dict:
  """Interleaved timings of every implementation (and torch) on one model."""
  import jax
  import optax
  from flax import nnx

  from experiments.models.resnet import ResNet
  from experiments.kernels.train_step import create_train_state, make_train_step

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, batch)
  model = ResNet(depth, 10, use_bn=bn, rngs=nnx.Rngs(0))
  tx = optax.adamw(1e-3, weight_decay=1e-4)

  runners = {}
  for spec in impls:
    impl, chunk, conv = parse_impl(spec)
    holder = {"state": create_train_state(model, tx, seed=0)}
    step = make_train_step(model, tx, impl=impl, conv=conv,
                           conv_grad_chunk=chunk)

    def run(step=step, holder=holder):
      holder["state"], m = step(holder["state"], images, labels)
      jax.block_until_ready((holder["state"], m))
    runners[candidate_name(spec)] = run

  if torch_threads:
    import torch
    from benchmarks import torch_peer
    tlabels = torch.from_numpy(labels)
    x = (images.astype(np.float32) / 255.0).transpose(0, 3, 1, 2).copy()
    for fmt, memory_format in (("", torch.contiguous_format),
                               ("cl_", torch.channels_last)):
      tmodel = torch_peer.make_resnet(depth, bn=bn).to(memory_format=memory_format)
      tstep = torch_peer.make_train_step(
          tmodel, torch_peer.make_optimizer(tmodel, "adamw", 1e-3, 1e-4))
      timages = torch.from_numpy(x).contiguous(memory_format=memory_format)
      for n in torch_threads:
        def run_torch(n=n, tstep=tstep, timages=timages):
          # One model per memory format, stepped with n intra-op threads (set
          # per call: the candidates are interleaved).
          torch.set_num_threads(n)
          tstep(timages, tlabels)
        runners[f"torch_{fmt}{n}t"] = run_torch

  first, times = {}, {k: [] for k in runners}
  for name, run in runners.items():
    t0 = time.perf_counter()
    run()
    first[name] = time.perf_counter() - t0
    log(f"  {_key(depth, bn)} {name}: first call {first[name]:.2f} s")
  for r in range(reps):
    for name, run in runners.items():
      t0 = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t0)
    log(f"  {_key(depth, bn)} rep {r + 1}/{reps}: " + ", ".join(
        f"{k} {v[-1]:.3f}s" for k, v in times.items()))
  out = {}
  for name in runners:
    med = float(np.median(times[name]))
    out[name] = {
        "median_s": med, "min_s": float(np.min(times[name])),
        "times_s": [round(t, 4) for t in times[name]],
        "first_call_s": first[name],
        "compile_s": max(first[name] - med, 0.0),
    }
  return out


def parse_impl(spec: str) -> tuple[str, int, str]:
  """A candidate spec -> (impl, weight-gradient chunk (0 = off), conv).

  ``"nofusion"`` -> ("nofusion", 0, "xla"); ``"nofusion:8"`` -> ("nofusion",
  8, "xla"); ``"nofusion+onednn"`` -> ("nofusion", 0, "onednn").
  """
  spec, plus, conv = spec.partition("+")
  impl, _, chunk = spec.partition(":")
  return impl, int(chunk) if chunk else 0, conv if plus else "xla"


def candidate_name(spec: str) -> str:
  impl, chunk, conv = parse_impl(spec)
  return impl + (f"+chunk{chunk}" if chunk else "") + (
      "+onednn" if conv == "onednn" else "")


def best_peer(timings: dict) -> str | None:
  """Name of the fastest PyTorch configuration (median), if any was timed."""
  peers = [k for k in timings if k.startswith("torch_")]
  return min(peers, key=lambda k: timings[k]["median_s"]) if peers else None


def markdown_table(results: dict) -> str:
  """Median s/step (and ratio to the fastest PyTorch) per model, as markdown."""
  models = sorted(results["models"].values(), key=lambda m: (m["bn"], m["depth"]))
  names = [n for n in models[0]["timings"] if not n.startswith("torch")]
  head = ["model", *names, "PyTorch", "compile (s)", "load"]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for m in models:
    t = m["timings"]
    tor = t.get("torch")
    cells = [f"ResNet-{m['depth']} {'BN' if m['bn'] else 'no BN'}"]
    for n in names:
      c = f"{t[n]['median_s']:.2f}"
      if tor:
        c += f" ({t[n]['median_s'] / tor['median_s']:.2f}x)"
      cells.append(c)
    cells.append(f"{tor['median_s']:.2f} ({tor.get('fastest_of', '')})" if tor else "-")
    cells.append(" / ".join(f"{t[n]['compile_s']:.0f}" for n in names))
    cells.append("{:.1f}-{:.1f}".format(*m["load_average_1min"]))
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def draw(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  models = results["models"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
  names = sorted({n for m in models.values() for n in m["timings"]
                  if not n.startswith("torch_")},
                 key=lambda n: (n == "torch", n))
  colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for bn, style in ((False, "-o"), (True, "--s")):
    ms = sorted((m for m in models.values() if m["bn"] == bn),
                key=lambda m: m["depth"])
    if not ms:
      continue
    tag = "BN" if bn else "no BN"
    for name in names:
      pts = [(m["depth"], m["timings"][name]) for m in ms
             if name in m["timings"]]
      if not pts:
        continue
      d = [p[0] for p in pts]
      label = "PyTorch (fastest of threads)" if name == "torch" else name
      axes[0].plot(d, [p[1]["median_s"] for p in pts], style,
                   color=colors[name], label=f"{label} ({tag})")
      if name != "torch":
        axes[1].plot(d, [p[1]["compile_s"] for p in pts], style,
                     color=colors[name], label=f"{name} ({tag})")
        tor = [m["timings"].get("torch") for m in ms if name in m["timings"]]
        if all(tor):
          axes[2].plot(d, [p[1]["median_s"] / t["median_s"]
                           for p, t in zip(pts, tor)], style,
                       color=colors[name], label=f"{name} ({tag})")
  axes[0].set(xlabel="depth", ylabel="s / step (median)",
              title=f"train step, batch {results['batch']}")
  axes[1].set(xlabel="depth", ylabel="s", title="compile time (first call - step)")
  axes[2].axhline(1.0, color="gray", lw=0.8)
  axes[2].set(xlabel="depth", ylabel="JAX / PyTorch", title="time ratio to PyTorch")
  # Keep the candidates near parity readable: the plain XLA step reaches ~7x.
  top = max((float(np.max(line.get_ydata())) for line in axes[2].get_lines()),
            default=1.0)
  if top > 3.0:
    axes[2].set_ylim(0.0, 3.0)
    axes[2].set_title("time ratio to PyTorch (clipped at 3x)")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  load = results.get("load_range")
  fig.suptitle(
      f"{results['machine']} - load average during the run {load}"
      if load else results["machine"], fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  from experiments.files import write_figure
  write_figure(path, fig, dpi=110)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(
      prog="python -m benchmarks.step_vs_depth",
      description=__doc__.split("\n\n")[0])
  p.add_argument("--profile-depths", action="store_true",
                 help="(accepted for old command lines; does nothing)")
  p.add_argument("--depths", default="20,32,44,56,110",
                 help="no-BN depths (comma-separated 6n+2)")
  p.add_argument("--bn-depths", default="20,56", help="depths also run with BN")
  p.add_argument("--impls",
                 default="plain,nofusion:8,blockwise:8,plain+onednn,"
                         "nofusion+onednn,blockwise+onednn",
                 help="step implementations to time, each IMPL, IMPL:CHUNK "
                      "(XLA convolutions; CHUNK = images per conv "
                      "weight-gradient chunk, default 0 = XLA's whole-batch "
                      "one) or IMPL+onednn (oneDNN convolutions)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--reps", type=int, default=5, help="timed steps per candidate")
  p.add_argument("--torch-threads", default="1,2",
                 help="PyTorch intra-op thread counts to time, comma-separated "
                      "('' skips the PyTorch peer); the ratio uses the fastest")
  p.add_argument("--out", default=DEFAULT_OUT, help="JSON results file")
  p.add_argument("--figure", default=DEFAULT_FIGURE, help="PNG to draw ('' = none)")
  p.add_argument("--plot-only", action="store_true",
                 help="redraw the figure from --out without measuring")
  p.add_argument("--fresh", action="store_true",
                 help="discard results in --out instead of resuming")
  a = p.parse_args(argv)

  try:
    depths = [int(d) for d in a.depths.split(",") if d]
    bn_depths = [int(d) for d in a.bn_depths.split(",") if d]
    torch_threads = [int(n) for n in a.torch_threads.split(",") if n]
  except ValueError:
    p.error("--depths/--bn-depths/--torch-threads must be comma-separated "
            "integers like 20,56")
  bad = [d for d in depths + bn_depths if d < 8 or (d - 2) % 6]
  if bad:
    p.error(f"depths must be 6n+2 (8, 14, 20, 32, 44, 56, 110, 218); got {bad}")
  from experiments.configs.default import IMPLS
  impls = [i for i in a.impls.split(",") if i]
  try:
    unknown = [i for i in impls if parse_impl(i)[0] not in IMPLS
               or parse_impl(i)[2] not in ("xla", "onednn")
               or (parse_impl(i)[1] and parse_impl(i)[2] == "onednn")]
  except ValueError:
    p.error(f"--impls entries are IMPL, IMPL:CHUNK (an int) or IMPL+onednn, "
            f"got {a.impls!r}")
  if unknown:
    p.error(f"unknown --impls {unknown}; valid: IMPL, IMPL:CHUNK or "
            f"IMPL+onednn with IMPL one of {', '.join(IMPLS)}")
  if a.batch < 1 or a.reps < 1:
    p.error("--batch and --reps must be >= 1")

  import jax
  settings = {"batch": a.batch, "reps": a.reps, "impls": impls,
              "torch_threads": torch_threads}
  results = None
  if os.path.exists(a.out) and not a.fresh:
    with open(a.out) as f:
      results = json.load(f)
    if a.plot_only:
      draw(results, a.figure)
      print(markdown_table(results))
      print(f"wrote {a.figure}")
      return 0
    if results.get("settings") != settings:
      print(f"{a.out} holds other settings; starting over (old file replaced)")
      results = None
  elif a.plot_only:
    p.error(f"--plot-only: {a.out} does not exist; run without --plot-only")
  if results is None:
    results = {
        "description": "seconds per train step (forward, softmax CE, backward,"
                       " AdamW) on one fixed batch, interleaved repetitions",
        "settings": settings, "batch": a.batch,
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPUs, jax {jax.__version__} "
                   f"{jax.default_backend()}",
        "command": "python -m benchmarks.step_vs_depth " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "models": {},
    }
  todo = [(d, False) for d in depths] + [(d, True) for d in bn_depths]
  for i, (depth, bn) in enumerate(todo):
    key = _key(depth, bn)
    if key in results["models"]:
      print(f"[{i + 1}/{len(todo)}] {key}: already measured, skipping")
      continue
    load0 = os.getloadavg()[0]
    print(f"[{i + 1}/{len(todo)}] {key}: load average {load0:.1f}", flush=True)
    t = measure_model(depth, bn, impls, a.batch, a.reps, torch_threads,
                      log=lambda s: print(s, flush=True))
    best_torch = best_peer(t)
    if best_torch:
      t["torch"] = dict(t[best_torch], fastest_of=best_torch)
    load1 = os.getloadavg()[0]
    results["models"][key] = {
        "depth": depth, "bn": bn, "timings": t,
        "load_average_1min": [round(load0, 2), round(load1, 2)],
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    loads = [l for m in results["models"].values()
             for l in m["load_average_1min"]]
    results["load_range"] = [min(loads), max(loads)]
    _atomic_write_json(a.out, results)
    if "torch" in t:
      print("  ratio to the fastest PyTorch: " + ", ".join(
          f"{k} {v['median_s'] / t['torch']['median_s']:.2f}"
          for k, v in t.items() if not k.startswith("torch")), flush=True)
  print(markdown_table(results))
  if a.figure:
    draw(results, a.figure)
    print(f"wrote {a.out} and {a.figure}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())


if __name__ == "__main__":
  # Before the first JAX computation (experiments/kernels/host_memory.py):
  # the step's scratch buffer is then reused, not re-faulted every step.
  from experiments.kernels.host_memory import keep_freed_memory
  keep_freed_memory()
  sys.exit(main())
