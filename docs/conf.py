"""Sphinx configuration for the wsgi_kvsession documentation."""

from __future__ import annotations

import sys
from pathlib import Path

# Let autodoc import the package from the source tree (it also works when installed).
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

project = "wsgi_kvsession"
author = "the wsgi_kvsession authors"
copyright = "2026, the wsgi_kvsession authors"
release = "0.1.0.dev0"
version = "0.1"

extensions = [
    "sphinx.ext.autodoc",
]

# No intersphinx: the docs build must not need the network.

templates_path: list[str] = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {
    "show-inheritance": True,
}

html_theme = "furo"
html_title = "wsgi_kvsession"
