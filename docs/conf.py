"""Sphinx configuration of daskbatch's documentation site.

Build it with ``make docs`` (into ``docs/_build/html``); ``tests/test_docs.py`` builds
it with warnings as errors, checks its links, opens it in headless chromium and runs
the Python blocks of the pages. The built site works offline: the theme's CSS, JS and
fonts are copied into it, and nothing is loaded from elsewhere.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # daskbatch from this checkout, installed or not

import daskbatch  # noqa: E402

project = "daskbatch"
copyright = "the daskbatch authors"
version = release = daskbatch.__version__

extensions = [
    "myst_nb",  # Markdown (MyST) pages and the notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinxarg.ext",  # the command-line reference, from daskbatch.cli's parser
]

exclude_patterns = [
    "_build",
    "_templates",
    "**/.ipynb_checkpoints",
    "**/*.zarr",
    "notebooks/**/*.md",
]

# MyST: heading anchors for links such as [text](page.md#a-heading)
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]
# [text](#label) that is not a heading of its page: a label of another page
myst_ref_domains = ["std", "py"]
# A few pages show JSON with "..." and // comments: Pygments highlights them in its
# relaxed mode, which is what they need; the warning says only that.
suppress_warnings = ["misc.highlighting_failure"]

# The notebooks (docs/notebooks is a link to the repository's notebooks/) are shown as
# committed, without outputs: tests/test_notebooks.py runs them.
# off for the tests (which run every notebook themselves); `make docs` executes them,
# so that the site shows their plots and tables
nb_execution_mode = os.environ.get("DASKBATCH_DOCS_EXECUTE", "off")
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_allow_errors = False

# API reference (docs/api.md): a page per name of daskbatch.__all__, generated at build
# time into docs/generated/ (not kept in git); numpydoc renders the docstrings' sections.
autosummary_generate = True
templates_path = ["_templates"]
autodoc_typehints = "none"  # the docstrings' Parameters give the types in words
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"daskbatch {release}"
html_static_path: list[str] = []
html_theme_options = {
    # nothing from the network: no analytics, no icon links, no version switcher
    "analytics": {},
    "icon_links": [],
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "footer_start": ["copyright"],
    "footer_end": [],
    "secondary_sidebar_items": ["page-toc"],
}
html_use_index = False  # the API reference lists every name; no general index page
html_domain_indices = False
html_sidebars = {page: [] for page in ("index", "getting-started", "cli")}
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
# Sphinx adds MathJax (from a CDN) only to a page with maths; there is none, and
# tests/test_docs.py checks that no page loads anything from elsewhere.


def _api_rest(app: Any, docname: str, source: list[str]) -> None:
    """Append to the API page every name of ``daskbatch.__all__`` it does not list.

    The page groups the public names by topic; a name added to ``__all__`` later is
    documented all the same, under "More", until it is given its place.
    """
    if docname != "api":
        return
    listed = set(re.findall(r"^   (\w+)$", source[0], flags=re.MULTILINE))
    missing = [name for name in daskbatch.__all__ if name not in listed and name != "__version__"]
    if missing:
        source[0] += "\n".join(
            ["", "## More", "", "```{eval-rst}", ".. autosummary::", "   :toctree: generated", ""]
            + [f"   {name}" for name in missing]
            + ["```", ""]
        )


_REPO_LINK = re.compile(r"\[([^\]]+)\]\(\.\./[^)\s]+\)")


def _repo_links(app: Any, docname: str, source: list[str]) -> None:
    """Show a link to a folder of the repository (``[examples/images](../examples/images)``)
    as its text: the site holds the docs, not the repository's other folders."""
    source[0] = _REPO_LINK.sub(r"\1", source[0])


def setup(app: Any) -> None:
    app.connect("source-read", _api_rest)
    app.connect("source-read", _repo_links)
    app.connect("include-read", lambda app, path, docname, source: _repo_links(app, docname, source))
