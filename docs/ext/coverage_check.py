"""Fail the build when a name of ``proxopt.__all__`` has no API page.

Like optax's ``docs/ext/coverage_check.py``: after the build has read every
document, the set of objects Sphinx's Python domain knows (everything an
``autosummary``/``auto*`` directive documented) must contain every public
name. The same check runs without a build, from the sources, in
``tests/test_docs.py`` (:func:`documented_names`).
"""

from __future__ import annotations

import os
import re

API_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "api")

_DIRECTIVE = re.compile(
    r"^\.\. (autosummary|automodule|autofunction|autoclass|autodata)::\s*(\S*)")


def documented_names(api_dir: str = API_DIR) -> dict[str, str]:
  """Names documented by the ``docs/api/*.md`` pages, mapped to their page.

  Reads the autosummary entries and ``auto*`` directive targets (relative to
  ``.. currentmodule:: proxopt``) of every page.
  """
  found: dict[str, str] = {}
  for fname in sorted(os.listdir(api_dir)):
    if not fname.endswith(".md"):
      continue
    page = fname[:-3]
    in_summary = False
    with open(os.path.join(api_dir, fname)) as f:
      for line in f:
        m = _DIRECTIVE.match(line.strip())
        if m:
          kind, target = m.groups()
          in_summary = kind == "autosummary"
          if target:
            found[target.removeprefix("proxopt.")] = page
          continue
        s = line.strip()
        if in_summary:
          if s.startswith("```"):
            in_summary = False
          elif s and not s.startswith(":") and not s.startswith(".."):
            found[s.removeprefix("proxopt.")] = page
  return found


def _check(app, env):
  # Sphinx is imported here only: tests/test_docs.py loads this module
  # without Sphinx installed (the docs extra is not part of the test extra).
  from sphinx.util import logging

  import proxopt

  logger = logging.getLogger(__name__)
  objects = env.get_domain("py").objects
  missing = [n for n in proxopt.__all__
             if f"proxopt.{n}" not in objects and n != "__version__"]
  for n in missing:
    logger.warning("proxopt.%s is in proxopt.__all__ but has no API page "
                   "(add it to a docs/api/*.md autosummary)", n,
                   type="coverage_check")


def setup(app):
  app.connect("env-check-consistency", _check)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
