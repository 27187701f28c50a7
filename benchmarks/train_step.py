r"""Train-step benchmark: the experiments' JAX steps against the same model in PyTorch.

For each CIFAR ResNet (``--depths`` without BatchNorm, ``--bn-depths`` with
it) one fresh Python process builds every JAX step of ``--step`` and the
PyTorch peer and times them interleaved on one fixed batch: a first call of
each (for JAX: trace, compile and one step), one untimed round, then
``--reps`` rounds of one call of each, in a fresh random order every round
(:func:`benchmarks.common.interleaved`), so that load from other processes
hits all candidates alike. The statistic is the median. A step is the
forward pass, softmax cross-entropy, backward pass and one optimizer update
(``--optimizer``, the same hyper-parameters on both sides), with augmentation
off on the JAX side; PyTorch gets the same images, normalised by the JAX
step's own function, so both time the model and the optimizer only.

JAX steps (``--step``, repeated; the values of the experiments' ``--step``):

* ``plain``: :mod:`experiments.training.train_step`, the step the experiments
  run on every backend: one ``jax.jit``, XLA's kernels, the optax update, no
  CPU speed layer.
* ``kernels``: the CPU speed layer,
  :func:`experiments.kernels.train_step.make_train_step`, with every option
  ``"auto"``: the step ``python -m experiments.train`` runs on a CPU.
* ``kernels:OPTION=VALUE,...``: the same with these options: ``impl`` (auto,
  plain, nofusion, blockwise), ``conv`` (auto, xla, onednn), ``batch_norm``
  (auto, onednn, flax), ``relu`` (auto, onednn, xla) and, here only,
  ``chunk`` (images per weight-gradient chunk of XLA's convolutions, 0 = the
  whole batch); e.g. ``kernels:impl=nofusion,conv=xla`` or
  ``kernels:relu=xla``.

Steps that resolve to the same kernels on a model (``kernels:batch_norm=flax``
on a model without BatchNorm, say) are timed once; the row's ``same_as``
names the one timed.

PyTorch is :mod:`benchmarks.torch_peer` (the same network and init scheme,
``torch.optim`` with foreach kernels) in each memory format of
``--torch-formats`` (``nchw``; ``cl``, channels-last, the layout of the JAX
step) with each intra-op thread count of ``--torch-threads`` (on a loaded
machine one thread can beat all cores); ratios are to the fastest of these
in the same row. ``--precision bfloat16`` times both sides in mixed
precision: the JAX steps with ``precision="bfloat16"`` against PyTorch under
``torch.autocast("cpu", dtype=torch.bfloat16)`` with float32 master weights.
The measuring processes keep freed memory (glibc,
``experiments/kernels/host_memory.py``) unless ``EXPERIMENTS_HOST_MEMORY=default``.

``--json FILE`` holds ``{"description", "rows": [...]}``, one row per model
and settings::

  {"model": "resnet20", "depth": 20, "bn": false,
   "settings": {"batch", "reps", "precision", "optimizer", "steps",
                "torch_threads", "torch_formats", "augment", "order",
                "warmup_rounds", "process", "keep_freed_memory"},
   "timings": {"kernels": {"median_s", "min_s", "q25_s", "q75_s", "times_s",
                           "first_call_s", "compile_s", "module", "impl",
                           "conv", "conv_grad_chunk", "batch_norm", "relu",
                           "precision"},
               "torch_cl_2t": {"median_s", ..., "memory_format", "threads"}},
   "same_as": {}, "host_memory": "kept",
   "loadavg": {"start": [1, 5, 15 min], "end": [...]}, "utc", "command",
   "machine": {...}}

It is written atomically after every model. A row is identified by its
model and ``settings``: ``--resume`` skips models FILE already holds with
identical settings (after a kill); without it they are measured again and
replace their old row. Rows with other settings are kept, so one file holds
every kind of result (rows converted from earlier benchmarks carry a
``note`` saying how they were measured). ``python -m benchmarks.report
FILE`` turns it into Markdown tables (the docs include them); ``--figure
PNG`` draws step time, compile time and the ratio to PyTorch against depth
for this command's rows, ``--plot-only`` without measuring.

Commands (each writes its kind of result to
``benchmarks/results/train_step.json``; add ``--resume`` to continue an
interrupted one, ``--plot-only`` to only redraw its ``--figure``):

* Quick re-measure of the main comparison, ResNet-20/56 with and without
  BatchNorm: the default CPU step, the plain step and every PyTorch
  configuration (estimated from the recorded rows at well under 20 minutes
  on two idle cores)::

    python -m benchmarks.train_step --depths 20,56 --bn-depths 20,56 --step kernels --step plain --reps 7 --json benchmarks/results/train_step.json

* The same at ResNet-20/56/110 (the default models and steps)::

    python -m benchmarks.train_step --reps 7 --json benchmarks/results/train_step.json

* Step and compile time against depth for every implementation, and its
  figure::

    python -m benchmarks.train_step --depths 20,32,44,56,110 --bn-depths 20,56,110 --step kernels --step plain --step kernels:impl=nofusion,conv=xla --step kernels:impl=blockwise,conv=xla --step kernels:impl=plain,conv=onednn --step kernels:impl=nofusion,conv=onednn --step kernels:impl=blockwise,conv=onednn --reps 5 --json benchmarks/results/train_step.json --figure docs/figures/train_step.png

* oneDNN's BatchNorm and fused ReLUs against Flax's BatchNorm and XLA's ReLUs::

    python -m benchmarks.train_step --step kernels --step kernels:relu=xla --step kernels:batch_norm=flax --reps 7 --json benchmarks/results/train_step.json

* Mixed precision::

    python -m benchmarks.train_step --precision bfloat16 --step kernels --step plain --reps 7 --json benchmarks/results/train_step.json

* glibc's own malloc settings (rows record ``keep_freed_memory: false``):
  ``EXPERIMENTS_HOST_MEMORY=default`` before any of the commands above.

``--quick`` is a smoke test (ResNet-8, batch 8, 2 rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

from benchmarks import common
from experiments.kernels import host_memory

OPTIMIZERS = ("adamw", "adamprox", "adam_l2")
# Both sides' (experiments.training.train_step, benchmarks.torch_peer), named
# here so that parsing the command line imports neither JAX nor torch.
PRECISIONS = ("float32", "bfloat16")
LR, WD, L2 = 1e-3, 1e-4, 5e-4
TORCH_FORMATS = ("nchw", "cl")
DESCRIPTION = (
    "seconds per train step (forward, softmax cross-entropy, backward, "
    "optimizer update) on one fixed batch, JAX steps and PyTorch timed "
    "interleaved; written by python -m benchmarks.train_step (its docstring "
    "describes every field)")


def parse_step(spec: str) -> dict | None:
  """Keyword arguments of ``experiments.kernels.train_step.make_train_step``
  for one ``--step``, or None for ``plain`` (``experiments.training.train_step``).

  Args:
    spec: ``"plain"``, ``"kernels"`` or ``"kernels:OPTION=VALUE,..."``
      (the values of the experiments' ``--step``, split by
      ``experiments.configs.default.step_choice`` and checked by
      ``experiments.kernels.check_step_options``) plus, here only, ``chunk``.

  Returns:
    None for ``plain``; else a dict with only the given options (``chunk``
    as ``conv_grad_chunk``): ``{}`` for ``kernels``.

  Raises:
    ValueError: ``auto`` or another kind of step, an unknown option or value,
      an option given twice, a negative or non-integer chunk, or a chunk with
      oneDNN's convolutions.

  Example:
    >>> parse_step("kernels:impl=nofusion,conv=xla,chunk=8")
    {'impl': 'nofusion', 'conv': 'xla', 'conv_grad_chunk': 8}
  """
  # Imported here, not at the top: this module's measuring process must keep
  # freed memory before anything could start JAX's backend.
  from experiments.configs.default import step_choice
  from experiments.kernels import check_step_options

  kind, options = step_choice(spec)  # ConfigError is a ValueError
  if kind == "plain":
    return None
  if kind != "kernels":
    raise ValueError(f"step {spec!r}: a benchmark compares named steps; use plain, kernels "
                     "or kernels:OPTION=VALUE,...")
  chunk = options.pop("chunk", None)
  kwargs = check_step_options(options)
  if chunk is not None:
    if not chunk.isdigit():
      raise ValueError(f"step {spec!r}: chunk must be an int >= 0, got {chunk!r}")
    if options.get("conv") == "onednn" and int(chunk):
      raise ValueError(f"step {spec!r}: chunk splits XLA's weight gradients; "
                       "with conv=onednn oneDNN computes them whole")
    kwargs["conv_grad_chunk"] = int(chunk)
  return kwargs


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


def build_candidates(depth: int, bn: bool, settings: dict) -> dict:
  """Every candidate of one model, built but not timed.

  Args:
    depth: ResNet depth (6n + 2).
    bn: with BatchNorm.
    settings: a row's settings (see the module docstring): ``batch``,
      ``precision``, ``optimizer``, ``steps``, ``torch_threads``,
      ``torch_formats``.

  Returns:
    ``{"run": {name: f}, "info": {name: what it is}, "same_as": {spec: name},
    "torch_models": {format: model}}``; each ``f()`` takes one step on the
    fixed batch, waits for it (as timing needs) and returns its loss. JAX
    candidates are named by their spec, PyTorch ones
    ``torch_{format}_{threads}t``.
  """
  import jax
  from flax import nnx

  from experiments.input_pipeline import normalize
  from experiments.kernels.train_step import make_train_step
  from experiments.models.resnet import ResNet
  from experiments.training import train_step as plain_step

  rng = np.random.default_rng(0)
  batch, precision = settings["batch"], settings["precision"]
  images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (batch,)).astype(np.int32)
  images_dev, labels_dev = jax.device_put(images), jax.device_put(labels)
  model = ResNet(depth, 10, bn, rngs=nnx.Rngs(0))
  tx = _jax_tx(settings["optimizer"])

  run, info, same_as, resolved = {}, {}, {}, {}
  for spec in settings["steps"]:
    kwargs = parse_step(spec)
    if kwargs is None:
      step = plain_step.make_train_step(model, tx, augment=False,
                                        precision=precision)
      what = {"module": "experiments.training.train_step", "impl": "plain",
              "conv": "xla", "conv_grad_chunk": 0, "batch_norm": "flax",
              "relu": "xla", "precision": precision}
    else:
      step = make_train_step(model, tx, augment=False, precision=precision,
                             **kwargs)
      what = {"module": "experiments.kernels.train_step",
              **{k: getattr(step, k) for k in (
                  "impl", "conv", "conv_grad_chunk", "batch_norm", "relu",
                  "precision")}}
    # Two specs resolving to the same kernels compile to the same program:
    # time it once.
    kernels = tuple(what[k] for k in ("impl", "conv", "conv_grad_chunk",
                                      "batch_norm", "relu", "precision"))
    if kernels in resolved:
      same_as[spec] = resolved[kernels]
      continue
    resolved[kernels] = spec
    box = {"state": plain_step.create_train_state(model, tx, seed=0)}

    def jax_step(step=step, box=box):
      box["state"], metrics = step(box["state"], images_dev, labels_dev)
      jax.block_until_ready((box["state"], metrics))
      return metrics["loss"]
    run[spec], info[spec] = jax_step, what

  torch_models = {}
  if settings["torch_threads"] and settings["torch_formats"]:
    import torch

    from benchmarks import torch_peer
    # The same images, normalised by the JAX step's own function, in NCHW.
    x = np.asarray(normalize(jax.numpy.asarray(images))).transpose(0, 3, 1, 2)
    tlabels = torch.from_numpy(labels.astype(np.int64))
    for fmt in settings["torch_formats"]:
      memory_format = (torch.channels_last if fmt == "cl"
                       else torch.contiguous_format)
      # One model and optimizer per format, from the same seed, shared by
      # the thread counts.
      tmodel = torch_peer.make_resnet(depth, bn=bn, seed=0).to(
          memory_format=memory_format)
      timages = torch.from_numpy(np.ascontiguousarray(x)).contiguous(
          memory_format=memory_format)
      tstep = torch_peer.make_train_step(
          tmodel, _torch_opt(tmodel, settings["optimizer"]), precision)
      torch_models[fmt] = tmodel
      for n in settings["torch_threads"]:
        def torch_step(n=n, tstep=tstep, timages=timages):
          # Set per call: the candidates are interleaved.
          torch.set_num_threads(n)
          return tstep(timages, tlabels)
        name = f"torch_{fmt}_{n}t"
        run[name] = torch_step
        info[name] = {"module": "benchmarks.torch_peer", "memory_format": fmt,
                      "threads": n, "precision": precision}
  return {"run": run, "info": info, "same_as": same_as,
          "torch_models": torch_models}


def measure_model(depth: int, bn: bool, settings: dict) -> dict:
  """One row: every candidate of one model timed interleaved (see the module
  docstring). Runs in the process :func:`main` starts for the model."""
  load_start = list(os.getloadavg())
  built = build_candidates(depth, bn, settings)
  first = {}
  for name, f in built["run"].items():
    t0 = time.perf_counter()
    f()
    first[name] = time.perf_counter() - t0
    common.log(f"    {name}: first call {first[name]:.2f} s")
  times = common.interleaved(built["run"], settings["reps"],
                             warmup=settings["warmup_rounds"])
  timings = {}
  for name, ts in times.items():
    med = common.median(ts)
    t = {"median_s": med, "min_s": float(np.min(ts)),
         "q25_s": float(np.quantile(ts, 0.25)),
         "q75_s": float(np.quantile(ts, 0.75)),
         "times_s": [round(x, 6) for x in ts], "first_call_s": first[name]}
    if not name.startswith("torch_"):
      t["compile_s"] = max(first[name] - med, 0.0)
    timings[name] = {**t, **built["info"][name]}
  machine = common.machine_info()
  machine.pop("loadavg_start", None)
  return {
      "model": f"resnet{depth}", "depth": depth, "bn": bn,
      "settings": settings, "timings": timings, "same_as": built["same_as"],
      # glibc keeping freed memory (experiments/kernels/host_memory.py): all
      # candidates run in this process, so all get the same allocator.
      "host_memory": host_memory.status(),
      "loadavg": {"start": load_start, "end": list(os.getloadavg())},
      "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "machine": machine,
  }


def row_key(row: dict) -> tuple:
  """What makes two rows the same measurement: the model and the settings."""
  return (row["depth"], row["bn"], json.dumps(row["settings"], sort_keys=True))


def _ints(text: str, flag: str, ap) -> list[int]:
  try:
    return [int(x) for x in text.split(",") if x]
  except ValueError:
    ap.error(f"{flag}: expected comma-separated integers like 20,56, got {text!r}")


def parse_args(argv=None) -> argparse.Namespace:
  """The command line (see ``--help``), checked; lists are parsed."""
  ap = argparse.ArgumentParser(
      prog="python -m benchmarks.train_step",
      description=__doc__.split("\n\n")[0])
  ap.add_argument("--depths", default="20,56,110",
                  help="ResNet depths (6n+2) without BatchNorm, comma-separated "
                       "('' for none; default 20,56,110)")
  ap.add_argument("--bn-depths", default="20,56,110",
                  help="ResNet depths with BatchNorm ('' for none; default "
                       "20,56,110)")
  ap.add_argument("--step", action="append", dest="steps", metavar="STEP",
                  help="a JAX step to time, repeated for several: plain, "
                       "kernels or kernels:OPTION=VALUE,... (options impl, conv, "
                       "batch_norm, relu, chunk; module docstring); default: "
                       "--step kernels --step plain")
  ap.add_argument("--batch", type=int, default=128, help="default 128")
  ap.add_argument("--reps", type=int, default=None,
                  help="timed interleaved rounds (default 5; 2 with --quick)")
  ap.add_argument("--precision", default="float32", choices=PRECISIONS,
                  help="float32 (default) or bfloat16: mixed precision on "
                       "both sides")
  ap.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                  help="default adamw (PyTorch: AdamW also for adamprox)")
  ap.add_argument("--torch-threads", default=f"1,{os.cpu_count()}",
                  help="PyTorch intra-op thread counts ('' skips PyTorch; "
                       "default 1 and all cores)")
  ap.add_argument("--torch-formats", default=",".join(TORCH_FORMATS),
                  help="PyTorch memory formats: nchw, cl (channels-last); "
                       "default both")
  ap.add_argument("--json", metavar="FILE", help="results file (rows are "
                  "added or replaced; others kept)")
  ap.add_argument("--resume", action="store_true",
                  help="skip models FILE already holds with these settings")
  ap.add_argument("--figure", metavar="PNG",
                  help="draw this command's rows against depth")
  ap.add_argument("--plot-only", action="store_true",
                  help="draw --figure from the rows in --json FILE without "
                       "measuring")
  ap.add_argument("--quick", action="store_true",
                  help="smoke test: ResNet-8 (for each of --depths and "
                       "--bn-depths that is not empty), batch 8, 2 rounds")
  args = ap.parse_args(argv)

  args.depths = _ints(args.depths, "--depths", ap)
  args.bn_depths = _ints(args.bn_depths, "--bn-depths", ap)
  bad = [d for d in args.depths + args.bn_depths if d < 8 or (d - 2) % 6]
  if bad:
    ap.error(f"depths must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...); got {bad}")
  if not args.depths and not args.bn_depths:
    ap.error("--depths and --bn-depths are both empty: nothing to measure")
  args.steps = args.steps or ["kernels", "plain"]
  if len(set(args.steps)) < len(args.steps):
    ap.error(f"--step: a step is given twice: {args.steps}")
  for spec in args.steps:
    try:
      kwargs = parse_step(spec)
    except ValueError as e:
      ap.error(f"--step: {e}")
    if kwargs and kwargs.get("conv_grad_chunk") and args.precision != "float32":
      ap.error(f"--step {spec}: chunk sums per-chunk weight gradients in "
               "float32 only")
  args.torch_threads = _ints(args.torch_threads, "--torch-threads", ap)
  if any(n < 1 for n in args.torch_threads):
    ap.error("--torch-threads must be >= 1")
  args.torch_formats = [f for f in args.torch_formats.split(",") if f]
  for f in args.torch_formats:
    if f not in TORCH_FORMATS:
      ap.error(f"--torch-formats: unknown {f!r}; valid: {', '.join(TORCH_FORMATS)}")
  if args.batch < 1:
    ap.error("--batch must be >= 1")
  if args.reps is not None and args.reps < 1:
    ap.error("--reps must be >= 1")
  if args.resume and not args.json:
    ap.error("--resume needs --json FILE")
  if args.plot_only and not (args.json and args.figure):
    ap.error("--plot-only needs --json FILE and --figure PNG")
  if args.quick:
    args.depths = [8] if args.depths else []
    args.bn_depths = [8] if args.bn_depths else []
    args.batch = 8
  if args.reps is None:
    args.reps = 2 if args.quick else 5
  return args


def settings_of(args: argparse.Namespace) -> dict:
  """A row's ``settings`` from the parsed command line: everything that makes
  two measurements of one model comparable (the resume key)."""
  return {
      "batch": args.batch, "reps": args.reps, "precision": args.precision,
      "optimizer": args.optimizer, "steps": list(args.steps),
      "torch_threads": list(args.torch_threads),
      "torch_formats": list(args.torch_formats),
      # The protocol (rows converted from older benchmarks differ here).
      "augment": False, "order": "random", "warmup_rounds": 1,
      "process": "a fresh process per model",
      "keep_freed_memory": os.environ.get(host_memory.ENV_VAR) != "default",
  }


def _measure_in_fresh_process(depth: int, bn: bool, settings: dict) -> dict:
  """:func:`measure_model` in a new Python process (this module with
  ``--one-model``), which starts by keeping freed memory and holds nothing of
  the models before it: in one long process the heap those left behind made
  the later steps slower and noisier."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = {"depth": depth, "bn": bn, "settings": settings}
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_step", "--one-model",
       json.dumps(config)], cwd=root, stdout=subprocess.PIPE, text=True)
  if proc.returncode:
    raise RuntimeError(f"benchmarks.train_step: resnet{depth} bn={bn} failed "
                       f"(exit {proc.returncode}; its error is above).")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
  """Measures (or, with ``--plot-only``, finds) this command's rows, writes
  them to ``--json``, prints their table and draws ``--figure``.

  Returns:
    The results (``{"description", "rows"}``: every row of ``--json`` FILE
    if given, else this command's).
  """
  from benchmarks import report
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["--one-model"]:  # a child of _measure_in_fresh_process
    row = measure_model(**json.loads(argv[1]))
    print(json.dumps(row), flush=True)
    return row
  args = parse_args(argv)
  command = "python -m benchmarks.train_step " + shlex.join(argv)
  results = common.load_json(args.json) or {"description": DESCRIPTION,
                                            "rows": []}
  if "rows" not in results:
    raise SystemExit(f"{args.json} is not a results file of this benchmark "
                     "(no 'rows'); pass another --json FILE")
  settings = settings_of(args)
  todo = [(d, False) for d in args.depths] + [(d, True) for d in args.bn_depths]
  by_key = {row_key(r): r for r in results["rows"]}
  mine = []
  for i, (depth, bn) in enumerate(todo):
    key = row_key({"depth": depth, "bn": bn, "settings": settings})
    name = f"resnet{depth} {'with' if bn else 'without'} BN"
    if key in by_key and (args.resume or args.plot_only):
      common.log(f"[{i + 1}/{len(todo)}] {name}: already in {args.json}")
      mine.append(by_key[key])
      continue
    if args.plot_only:
      common.log(f"[{i + 1}/{len(todo)}] {name}: not in {args.json}")
      continue
    common.log(f"[{i + 1}/{len(todo)}] {name}, load average "
               f"{os.getloadavg()[0]:.1f}: {len(args.steps)} JAX steps, "
               f"{len(args.torch_threads) * len(args.torch_formats)} PyTorch "
               f"configurations, {args.reps} rounds ...")
    row = _measure_in_fresh_process(depth, bn, settings)
    row["command"] = command
    # A new measurement of the same model and settings replaces the old row
    # (the new one goes last, in the order of measurement).
    results["rows"] = [r for r in results["rows"] if row_key(r) != key]
    results["rows"].append(row)
    by_key[key] = row
    mine.append(row)
    if args.json:
      common.write_json_atomic(args.json, results)
  if not mine:
    raise SystemExit(f"--plot-only: {args.json} holds no row of these models "
                     "with these settings")
  print(report.rows_table(mine))
  if args.figure:
    report.draw(mine, args.figure)
    common.log(f"wrote {args.figure}")
  return results if args.json else {"description": DESCRIPTION, "rows": mine}


if __name__ == "__main__":
  # Before the first JAX computation (experiments/kernels/host_memory.py):
  # the step's scratch buffer is then reused, not re-faulted every step.
  host_memory.keep_freed_memory()
  main()
