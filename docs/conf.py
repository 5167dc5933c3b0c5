"""Sphinx configuration of the flask-llm-proxy documentation (Pallets theme, as Flask's)."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# the package of this checkout, not whichever copy is installed; the extension beside this file
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_ext"))

from flask_llm_proxy import __version__  # noqa: E402

# -- Project ------------------------------------------------------------------------------------

project = "flask-llm-proxy"
author = "flask-llm-proxy contributors"
copyright = "flask-llm-proxy contributors"
release = __version__
version = ".".join(release.split(".")[:2]) + ".x"

# -- General ------------------------------------------------------------------------------------

default_role = "code"
extensions = [
    "sphinx.ext.autodoc",
    "pallets_sphinx_themes",
    "llm_proxy_config",
]
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True

# -- HTML ---------------------------------------------------------------------------------------

html_theme = "flask"
html_theme_options = {"index_sidebar_logo": False}
html_sidebars = {
    "index": ["localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
html_static_path = ["_static"]
html_css_files = ["llm-proxy.css"]
html_title = f"flask-llm-proxy Documentation ({version})"
html_show_sourcelink = False
version_banner = False  # the theme's banner asks Read the Docs for versions: no network here
