"""A run's output directory: ``config.json``, ``metrics.jsonl``,
``summary.json`` and ``checkpoints/`` (Orbax). Refuses to mix two
configurations in one directory; recognises a constant-step run extended to
more epochs."""

from __future__ import annotations

import json
import pathlib
import shutil

from experiments.configs.default import Config, ConfigError
from experiments.files import write_json, write_text


def _semantic(d: dict) -> dict:
  return Config.from_dict(d).semantic()


def extends(old: dict, cfg: Config) -> bool:
  """True if ``cfg`` is run ``old`` trained for more epochs.

  Only with a constant step size: then epochs 1..E of an (E+k)-epoch run are
  exactly the E-epoch run, so a finished run can be extended in place.
  """
  same = {k: v for k, v in _semantic(old).items() if k != "epochs"}
  return (old.get("schedule") == "constant" and cfg.epochs >= old.get("epochs", 0)
          and same == {k: v for k, v in cfg.semantic().items() if k != "epochs"})


def prepare(cfg: Config) -> pathlib.Path:
  """Creates ``cfg.out`` or checks that it holds this run; returns it."""
  out = pathlib.Path(cfg.out)
  cfg_path = out / "config.json"
  if cfg_path.exists():
    try:
      old = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
      old = None
    if old is not None and old.get("epochs") != cfg.epochs and extends(old, cfg):
      write_json(cfg_path, cfg.to_dict())  # the same run, trained longer
    elif old is None or _semantic(old) != cfg.semantic():
      if not cfg.overwrite:
        new, prev = cfg.semantic(), _semantic(old or {})
        diff = sorted(k for k in set(new) | set(prev) if prev.get(k) != new.get(k))
        raise ConfigError(
            f"--out {out} holds a run with a different configuration (differs in: "
            f"{', '.join(diff)}); refusing to overwrite it. Choose another --out, "
            "or pass --overwrite to delete it (with a constant step size, a larger "
            "--epochs alone extends a run).")
      shutil.rmtree(out)
  elif out.exists() and any(out.iterdir()) and not cfg.overwrite:
    raise ConfigError(
        f"--out {out} exists, is not empty and holds no config.json; choose another "
        "--out or pass --overwrite.")
  elif out.exists() and cfg.overwrite:
    shutil.rmtree(out)
  out.mkdir(parents=True, exist_ok=True)
  return out


def read_metrics(out: pathlib.Path, upto_epoch: int) -> list[dict]:
  path = pathlib.Path(out) / "metrics.jsonl"
  if not path.exists():
    return []
  rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
  return [r for r in rows if r["epoch"] <= upto_epoch]


def write_metrics(out: pathlib.Path, rows: list[dict]) -> None:
  write_text(pathlib.Path(out) / "metrics.jsonl",
             "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
