"""Markdown tables from the benchmark JSON files (for the README).

``python -m benchmarks.report benchmarks/results/optimizer_step.json
benchmarks/results/train_step.json``
"""

from __future__ import annotations

import json
import sys


def _machine(m: dict) -> str:
  fmt = lambda x: "?" if x is None else f"{x:.2f}"
  load = fmt(m.get("loadavg_start", [None])[0])
  end = fmt(m.get("loadavg_end", [None])[0])
  return (f"{m.get('cpu')} ({m.get('cpu_count')} cores), jax {m.get('jax')}"
          f" ({m.get('jax_backend')}), optax {m.get('optax')}, torch "
          f"{m.get('torch')}; {m.get('date_utc')}; 1-min load average "
          f"{load} at start, {end} at end; command: `{m.get('note', '')}`")


def optimizer_table(d: dict) -> str:
  lines = [
      f"Machine: {_machine(d['machine'])}.",
      "",
      f"Bandwidth floor: {d['bandwidth_gbs']:.1f} GB/s "
      f"(`{d.get('bandwidth_source')}`; all probes: " + ", ".join(
          f"{k} {v:.1f}" for k, v in d.get("bandwidth_probes", {}).items())
      + " GB/s).",
      "",
      "| tree | optimizer | median ms | % of 28 B/param floor | state bytes/param |",
      "|---|---|---:|---:|---:|",
  ]
  for r in d["results"]:
    sb = r.get("state_bytes")
    sbp = f"{sb / r['params']:.2f}" if sb is not None else "-"
    lines.append(f"| {r['tree']} | {r['optimizer']} | "
                 f"{r['median_s'] * 1e3:.2f} | "
                 f"{100 * r['roofline_fraction']:.0f}% | {sbp} |")
  lines += ["", "| ratio | " + " | ".join(d["ratios_by_tree"]) + " |",
            "|---|" + "---:|" * len(d["ratios_by_tree"])]
  keys = []
  for rat in d["ratios_by_tree"].values():
    keys += [k for k in rat if k not in keys and isinstance(rat[k], float)]
  for k in keys:
    lines.append(f"| {k} | " + " | ".join(
        f"{rat[k]:.2f}" if k in rat else "-"
        for rat in d["ratios_by_tree"].values()) + " |")
  return "\n".join(lines)


def train_table(d: dict) -> str:
  lines = [
      f"Machine: {_machine(d['machine'])}.",
      "",
      "| model | BN | batch | JAX impl / conv [/ BN] [/ precision] | JAX s/step | torch NCHW s/step "
      "(threads) | torch channels-last s/step (threads) | JAX / best torch "
      "| JAX img/s | JAX compile s |",
      "|---|---|---:|---|---:|---|---|---:|---:|---:|",
  ]
  for r in d["results"]:
    by = r.get("torch_step_s_by_threads", {str(r.get("torch_threads")):
                                           r["torch_step_s"]})
    cl = r.get("torch_cl_step_s_by_threads", {})
    impl = r["impl"] if r["impl"] == r.get("impl_resolved") else (
        f"{r['impl']} ({r.get('impl_resolved')})")
    impl += f" / {r.get('conv_resolved', 'xla')}"
    if r["bn"]:  # who computed the train-mode BatchNorm (rows before it was a choice: Flax)
      impl += f" / BN {r.get('batch_norm_resolved', 'flax')}"
    if r.get("relu_resolved", "xla") == "onednn":  # rows before it was a choice: XLA's
      impl += " / fused ReLU"
    if r.get("precision", "float32") != "float32":
      impl += f" / {r['precision']}"
    best = r.get("torch_best_step_s", r["torch_step_s"])
    lines.append(
        f"| {r['model']} | {'on' if r['bn'] else 'off'} | {r['batch']} | "
        f"{impl} | {r['jax_step_s']:.2f} | "
        + ", ".join(f"{v:.2f} ({k}t)" for k, v in by.items()) + " | "
        + (", ".join(f"{v:.2f} ({k}t)" for k, v in cl.items()) or "-")
        + f" | {r['jax_step_s'] / best:.2f} | {r['jax_images_per_s']:.0f} | "
        f"{r['compile_s']:.1f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  for path in (argv if argv is not None else sys.argv[1:]):
    with open(path) as f:
      d = json.load(f)
    print(f"### `{path}`\n")
    print(optimizer_table(d) if "bandwidth_gbs" in d else train_table(d))
    print()


if __name__ == "__main__":
  main()
