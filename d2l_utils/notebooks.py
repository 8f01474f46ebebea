"""Executing the chapters' notebooks: refreshing their stored outputs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["store_outputs"]


def store_outputs(path: str | os.PathLike, timeout: int = 1800) -> None:
    """Run a notebook top to bottom in a fresh kernel on the CPU and save its outputs in place.

    These are the outputs the book shows and ``pytest --nbval`` checks: the
    default (quick) profile on a CPU. The file is replaced only when every
    cell ran, so a failure leaves the committed notebook as it was.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    previous = os.environ.get("D2L_DEVICE")
    os.environ["D2L_DEVICE"] = "cpu"
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("D2L_DEVICE")
        else:
            os.environ["D2L_DEVICE"] = previous
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".ipynb.tmp")
    os.close(fd)
    try:
        nbformat.write(nb, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
