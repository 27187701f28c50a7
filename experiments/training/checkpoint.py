"""Checkpoints of a train state with Orbax, restored by tree path.

The state pytree (``TrainState``: params, model_state, opt_state, step, rng)
is saved as a nested dict keyed by its tree paths (``params/blocks/0/conv1/
kernel/value``, ``opt_state/0/mu/...``) through ``orbax.checkpoint.
CheckpointManager`` (atomic: a temporary directory renamed when complete, so a
SIGKILL leaves the previous checkpoint), next to a JSON ``meta`` item (epoch,
step, wall time). Restoring reads the saved paths first and compares them with
the current state's: a missing or extra path, or a different shape or dtype,
raises :class:`CheckpointMismatch` naming the first few, so a checkpoint of
another model (even one whose renamed submodule has kernels of the same
shapes) or another optimizer is never loaded into the wrong leaves.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
  """The checkpoint was written for another model or optimizer."""


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_of(path) -> str:
  """A tree path as ``a/b/0/c``."""
  return "/".join(_key_name(k) for k in path)


def flatten_by_path(tree: Any) -> dict[str, Any]:
  """``{"a/b/0/c": leaf}`` for every leaf of ``tree``."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {}
  for path, leaf in flat:
    out[path_of(path)] = leaf
  return out


def _nest(flat: dict[str, Any]) -> dict:
  nested: dict = {}
  for name, leaf in flat.items():
    *parents, last = name.split("/")
    d = nested
    for p in parents:
      d = d.setdefault(p, {})
    d[last] = leaf
  return nested


def _describe(x) -> tuple[str, tuple]:
  return str(np.dtype(x.dtype)), tuple(x.shape)


class Checkpointer:
  """Saves and restores one run's train state in ``directory`` (keeps the last)."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True,
            # Synchronous: a checkpoint is complete when save() returns, so a
            # SIGKILL right after an epoch never loses that epoch.
            enable_async_checkpointing=False),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_nest(flatten_by_path(state))),
        meta=ocp.args.JsonSave(meta)))
    self._manager.wait_until_finished()

  def saved_paths(self, step: int | None = None) -> dict[str, tuple[str, tuple]]:
    """``{path: (dtype, shape)}`` of the checkpoint at ``step`` (default latest)."""
    step = self.latest_step() if step is None else step
    meta = self._manager.item_metadata(step)["state"]
    meta = getattr(meta, "tree", meta)
    return {k: _describe(v) for k, v in flatten_by_path(meta).items()}

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
    """(state with ``template``'s structure, meta). Leaves are matched by path."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    want = flatten_by_path(template)
    have = self.saved_paths(step)
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    wrong = [f"{k}: saved {have[k][0]}{list(have[k][1])}, expected "
             f"{_describe(want[k])[0]}{list(_describe(want[k])[1])}"
             for k in want if k in have and have[k] != _describe(want[k])]
    if missing or extra or wrong:
      lines = []
      if missing:
        lines.append(f"missing from the checkpoint: {', '.join(missing[:3])}"
                     + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
      if extra:
        lines.append(f"not in the current state: {', '.join(extra[:3])}"
                     + (f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""))
      if wrong:
        lines.append("different shape or dtype: " + "; ".join(wrong[:3]))
      raise CheckpointMismatch(
          f"checkpoint {self.directory} (step {step}) was written by a different "
          "model or optimizer: " + "; ".join(lines) + ". Use another --out, or "
          "pass --overwrite to start this configuration from scratch.")
    abstract = _nest({k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype
                                              if not hasattr(v, "dtype") else v.dtype)
                      for k, v in want.items()})
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    flat = flatten_by_path(restored["state"])
    leaves = [flat[k] for k in want]  # want's order is the template's leaf order
    treedef = jax.tree.structure(template)
    return jax.tree.unflatten(treedef, leaves), dict(restored["meta"])

  def close(self) -> None:
    self._manager.close()


def load_state(directory: str | os.PathLike, template: Any) -> tuple[Any, dict]:
  """Restores the latest checkpoint of ``directory`` into ``template``'s structure."""
  ck = Checkpointer(directory)
  try:
    return ck.restore(template)
  finally:
    ck.close()


def load_arrays(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
  """``({path: array}, meta)`` of the latest checkpoint, without a template
  (for inspection and comparisons)."""
  ck = Checkpointer(directory)
  try:
    step = ck.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ck.directory}")
    # Onto this process's first device: a checkpoint saved on 8 devices is read
    # by a 1-device process too (Orbax refuses the saved topology otherwise).
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = _nest({k: jax.ShapeDtypeStruct(shape, np.dtype(dtype), sharding=here)
                      for k, (dtype, shape) in ck.saved_paths(step).items()})
    restored = ck._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return ({k: np.asarray(v) for k, v in flatten_by_path(restored["state"]).items()},
            dict(restored["meta"]))
  finally:
    ck.close()
