"""Sphinx configuration: furo, MyST pages, numpydoc API, figures drawn at build time."""

from __future__ import annotations

import sys
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT / "src"))  # document this checkout, installed or not
sys.path.insert(0, str(DOCS))

import figures  # noqa: E402
import loss_graph  # noqa: E402

import infonce_xp  # noqa: E402

project = "infonce_xp"
author = "infonce_xp developers"
copyright = "infonce_xp developers"
version = release = infonce_xp.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # MathJax 3 served from the built site (_static/mathjax/), not a CDN: formulas render offline
    "sphinx-mathjax-offline",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

autodoc_typehints = "none"  # numpydoc's Parameters sections say it better
autodoc_member_order = "bysource"
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_xref_param_type = False

html_theme = "furo"
html_title = f"infonce_xp {release}"
pygments_style = "friendly"
pygments_dark_style = "monokai"

# Figures: drawn from the code on every build, so they always show the current implementation.
GENERATED = DOCS / "_generated"
GENERATED.mkdir(exist_ok=True)
figures.main(GENERATED / "negatives.png")
figures.recipes(GENERATED / "recipes.png")
figures.targets(GENERATED / "targets.png")
figures.sigmoid(GENERATED / "sigmoid.png")
figures.ring(GENERATED / "ring.png")
loss_graph.main(GENERATED / "loss_graph.png")


def _math_is_served_by_the_site(app: Sphinx, config: Config) -> None:
    """Fail the build if MathJax would come from the network (formulas then need a connection)."""
    if "://" in config.mathjax_path:
        raise ExtensionError(f"mathjax_path must be a file of the site; got {config.mathjax_path}")


def setup(app: Sphinx) -> None:
    app.connect("config-inited", _math_is_served_by_the_site)
