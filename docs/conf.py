"""Sphinx configuration of the proxopt documentation.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # proxopt and benchmarks/ (for the benchmark tables)
sys.path.insert(0, os.path.join(HERE, "ext"))

import proxopt  # noqa: E402

project = "proxopt"
author = "The proxopt developers"
copyright = "2026, The proxopt developers"
release = proxopt.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "benchmark_tables",  # docs/ext: benchmarks/results/*.json -> Markdown tables
    "coverage_check",  # docs/ext: every name of proxopt.__all__ is on an API page
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# docs/results/*.md are generated tables that reproduction.md quotes; _generated/ is
# written by docs/ext/benchmark_tables.py and included by benchmarks.md.
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "ext", "results", "_generated"]

# autodoc / autosummary: one page per public name, signatures as in the code.
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False, "show-inheritance": False}
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True

# Google-style docstrings (Args:, Returns:, Example:, References:), as in optax.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("References", "notes_style")]

# MyST: Markdown guides, $...$ math, heading anchors for in-page links.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"proxopt {release}"
html_static_path = []
