"""Markdown tables (and the train-step figure) from the benchmark JSON files.

``python -m benchmarks.report benchmarks/results/optimizer_step.json
benchmarks/results/train_step.json`` prints the tables that the docs include
(``docs/ext/benchmark_tables.py`` calls the same functions at build time).
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


def fastest_torch(row: dict) -> str | None:
  """Name of the row's fastest PyTorch configuration (median), if any."""
  peers = [k for k in row["timings"] if k.startswith("torch_")]
  return min(peers, key=lambda k: row["timings"][k]["median_s"]) if peers else None


def _kernels(t: dict, bn: bool) -> str:
  """What a candidate ran: ``nofusion / onednn / BN onednn / fused ReLU``."""
  if t.get("module") == "benchmarks.torch_peer":
    fmt = "channels-last" if t["memory_format"] == "cl" else "NCHW"
    return f"PyTorch {fmt}, {t['threads']} thread{'s' * (t['threads'] > 1)}"
  label = f"{t['impl']} / {t['conv']}"
  if t.get("conv_grad_chunk"):
    label += f" / chunks of {t['conv_grad_chunk']}"
  if bn:
    label += f" / BN {t['batch_norm']}"
  if t.get("relu") == "onednn":
    label += " / fused ReLU"
  return label


def _fmt(x, digits: int) -> str:
  return "-" if x is None else f"{x:.{digits}f}"


def rows_table(rows: list[dict]) -> str:
  """One Markdown table of train-step rows: a line per candidate, its median
  seconds per step, interquartile range, ratio to the row's fastest PyTorch
  and compile time (first call minus the median step)."""
  lines = ["| model | step | kernels | s/step | q25-q75 | / fastest PyTorch "
           "| compile s | load average |",
           "|---|---|---|---:|---:|---:|---:|---|"]
  for row in rows:
    tm = row["timings"]
    best = fastest_torch(row)
    ref = tm[best]["median_s"] if best else None
    load = row.get("loadavg", {})
    load = "-".join(f"{load[k][0]:.1f}" for k in ("start", "end") if k in load)
    model = (f"ResNet-{row['depth']} {'BN' if row['bn'] else 'no BN'}")
    for i, (name, t) in enumerate(tm.items()):
      q = (f"{t['q25_s']:.3f}-{t['q75_s']:.3f}" if "q25_s" in t else "-")
      lines.append(
          f"| {model if i == 0 else ''} | `{name}` | {_kernels(t, row['bn'])} | "
          f"{t['median_s']:.3f} | {q} | "
          f"{_fmt(t['median_s'] / ref if ref else None, 2)} | "
          f"{_fmt(t.get('compile_s'), 1)} | {load if i == 0 else ''} |")
    for spec, timed in row.get("same_as", {}).items():
      lines.append(f"| | `{spec}` | the kernels of `{timed}` (timed once) "
                   "| | | | | |")
  return "\n".join(lines)


def _run_of(row: dict) -> str:
  """Rows of one invocation (``--resume`` continues it)."""
  return " ".join(w for w in row.get("command", "").split() if w != "--resume")


def _run_header(rows: list[dict]) -> str:
  r = rows[0]
  m, s = r.get("machine", {}), r["settings"]
  # Rows without their own time (converted ones) show the day only.
  date = (r["utc"][:16].replace("T", " ") + " UTC" if r.get("utc")
          else (m.get("date_utc") or "date not recorded")[:10])
  machine = ", ".join(str(x) for x in (
      m.get("cpu"), m.get("cpu_count") and f"{m['cpu_count']} cores",
      m.get("jax") and f"jax {m['jax']} ({m.get('jax_backend')})",
      m.get("torch") and f"torch {m['torch']}") if x)
  protocol = (
      f"batch {s['batch']}, {s['optimizer']}, {s['precision']}, median of "
      f"{s['reps']} interleaved rounds ({s['order']} order, "
      f"{s['warmup_rounds']} untimed), {s['process']}, augmentation "
      f"{'on' if s['augment'] else 'off'} (JAX), glibc "
      + ("keeping freed memory" if s["keep_freed_memory"] else "malloc defaults"))
  text = f"**{date}**, `{_run_of(r)}`: {machine}; {protocol}."
  notes = sorted({x["note"] for x in rows if x.get("note")})
  return text + "".join(f" {n}" for n in notes)


def train_table(d: dict) -> str:
  """Every run of a train-step results file, newest first: a line saying
  what ran it (command, machine, protocol) and its table."""
  runs: dict[str, list[dict]] = {}
  for row in d["rows"]:
    runs.setdefault(_run_of(row), []).append(row)
  order = sorted(runs.values(), key=lambda rs: rs[0].get("utc") or rs[0].get(
      "machine", {}).get("date_utc", ""), reverse=True)
  return "\n\n".join(_run_header(rs) + "\n\n" + rows_table(rs) for rs in order)


def draw(rows: list[dict], path: str) -> None:
  """Step time, compile time and time ratio to the fastest PyTorch against
  depth, one colour per candidate, models without BN solid, with BN dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  from matplotlib.lines import Line2D

  from experiments.files import write_figure

  names = []
  for row in rows:
    names += [n for n in row["timings"] if not n.startswith("torch_")
              and n not in names]
  names.append("fastest PyTorch")
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  color = {n: colors[i % len(colors)] for i, n in enumerate(names)}
  fig, axes = plt.subplots(1, 3, figsize=(15, 5.6))
  for bn, style in ((False, "-o"), (True, "--s")):
    ms = sorted((r for r in rows if r["bn"] == bn), key=lambda r: r["depth"])
    for name in names:
      pts = []
      for r in ms:
        best = fastest_torch(r)
        t = r["timings"].get(best if name == "fastest PyTorch" else name)
        if t:
          pts.append((r["depth"], t, r["timings"][best]["median_s"] if best else None))
      if not pts:
        continue
      depth = [p[0] for p in pts]
      axes[0].plot(depth, [p[1]["median_s"] for p in pts], style, color=color[name])
      if name != "fastest PyTorch":
        axes[1].plot(depth, [p[1].get("compile_s", np.nan) for p in pts], style,
                     color=color[name])
        if all(p[2] for p in pts):
          axes[2].plot(depth, [p[1]["median_s"] / p[2] for p in pts], style,
                       color=color[name])
  s = rows[0]["settings"]
  axes[0].set(xlabel="depth", ylabel="s / step (median)",
              title=f"train step, batch {s['batch']}, {s['precision']}")
  axes[1].set(xlabel="depth", ylabel="s", title="compile (first call - median step)")
  axes[2].axhline(1.0, color="gray", lw=0.8)
  axes[2].set(xlabel="depth", ylabel="JAX / fastest PyTorch",
              title="time ratio to the fastest PyTorch (same process)")
  # Keep the candidates near parity readable when the plain XLA step is far off.
  top = max((float(np.nanmax(line.get_ydata())) for line in axes[2].get_lines()),
            default=1.0)
  if top > 3.0:
    axes[2].set_ylim(0.0, 3.0)
    axes[2].set_title("time ratio to the fastest PyTorch (clipped at 3x)")
  for ax in axes:
    ax.grid(alpha=0.3)
  # One legend for all panels: a colour per candidate, a line style per BN.
  handles = [Line2D([], [], color=color[n], lw=2) for n in names] + [
      Line2D([], [], color="k", ls="-", marker="o"),
      Line2D([], [], color="k", ls="--", marker="s")]
  fig.legend(handles, names + ["without BN", "with BN"], loc="lower center",
             ncol=3, fontsize=8, frameon=False)
  loads = [x[0] for r in rows for x in r.get("loadavg", {}).values()]
  m = rows[0].get("machine", {})
  fig.suptitle(
      f"{_run_of(rows[0])}\n{m.get('cpu')}, {m.get('cpu_count')} cores, "
      f"jax {m.get('jax')}; {(rows[0].get('utc') or m.get('date_utc', ''))[:10]}"
      + (f"; 1-min load average {min(loads):.1f}-{max(loads):.1f}" if loads else ""),
      fontsize=8)
  rows_of_legend = -(-len(handles) // 3)
  fig.tight_layout(rect=(0, 0.045 * rows_of_legend + 0.02, 1, 1))
  write_figure(path, fig, dpi=110)
  plt.close(fig)


def main(argv=None) -> None:
  for path in (argv if argv is not None else sys.argv[1:]):
    with open(path) as f:
      d = json.load(f)
    print(f"### `{path}`\n")
    print(optimizer_table(d) if "bandwidth_gbs" in d else train_table(d))
    print()


if __name__ == "__main__":
  main()
