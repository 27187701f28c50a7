"""The one writer of result files: every JSON, CSV, figure, sample and log the
experiments produce goes through :func:`write_bytes`.

Written by hand because no dependency offers exactly this (orbax writes
checkpoints atomically, see :mod:`experiments.training.checkpoint`, but not
arbitrary files): the bytes go to ``<name>.tmp`` in the same directory, are
fsync'ed and moved into place with ``os.replace``, so a kill at any moment
leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
  """Atomically replaces ``path`` with ``data`` (creating parent folders)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
  """:func:`write_bytes` of UTF-8 text."""
  return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2,
               sort_keys: bool = True) -> pathlib.Path:
  """:func:`write_bytes` of ``obj`` as indented JSON plus a newline."""
  return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def write_figure(path: str | os.PathLike, fig, dpi: int = 120, **savefig_kw) -> pathlib.Path:
  """Saves a matplotlib figure (PNG) through :func:`write_bytes` and closes it."""
  import matplotlib.pyplot as plt

  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, **savefig_kw)
  plt.close(fig)
  return write_bytes(path, buf.getvalue())
