"""MathJax served by the book itself, so its mathematics is typeset offline too.

Sphinx loads MathJax from a CDN by default. This extension copies the browser
build of MathJax 3 (its ``es5`` folder) from the pinned PyPI package
``django-static-mathjax`` (see requirements.txt) into ``_static/mathjax`` of the
HTML build; ``mathjax_path`` in ``_config.yml`` points at a file in that copy.
"""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

TARGET = "mathjax"  # under _static/


def mathjax_es5() -> Path:
    """The ``es5`` folder of the installed MathJax package."""
    spec = find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionError("MathJax is not installed: pip install -r requirements.txt")
    es5 = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise ExtensionError(f"no MathJax browser build in {es5}")
    return es5


def check_mathjax_path(app: Sphinx) -> None:
    """Stop early when ``mathjax_path`` is not a file of the local copy."""
    if not app.config.mathjax_path.startswith(f"{TARGET}/"):
        raise ExtensionError(f"mathjax_path must start with '{TARGET}/', not {app.config.mathjax_path!r}")
    relative = app.config.mathjax_path.split("?")[0].removeprefix(f"{TARGET}/")
    if not (mathjax_es5() / relative).is_file():
        raise ExtensionError(f"mathjax_path {app.config.mathjax_path!r} names no file of MathJax's es5 folder")


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        shutil.copytree(mathjax_es5(), Path(app.outdir) / "_static" / TARGET, dirs_exist_ok=True)


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", check_mathjax_path)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
