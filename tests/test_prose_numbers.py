"""Numbers in a chapter's prose come from the run whose outputs the chapter stores.

A sentence such as "after 5 epochs the test accuracy is 0.886" must be true of
the stored outputs: when a chapter is re-run and its numbers move, the prose
has to move with them. Every decimal number of two to four places in the
Markdown cells (outside maths and inline code) must appear in the printed
outputs of the same notebook. A number quoted from elsewhere (a paper, the
exercises' suggested settings) is written in inline code or maths, or marked
with a trailing "(reported)" in the text. A chapter's note on its GPU time may quote the
run it names from results/full/cuda/ in the words of ``format_measured``, which
tests/test_estimate.py checks against that record.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from d2l_utils.estimate import format_measured, measured_runs

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d{2,4}(?![\w.]\d)")
NOT_PROSE = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`\n]*`|```.*?```", re.S)
REPORTED = re.compile(r"\d+\.\d+\s*\(reported\)")
GPU_RECORD = re.compile(r"`results/full/cuda/([\w.-]+)\.json`")


def printed_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            data = out.get("data", {})
            parts += ["".join(data.get(kind, "")) for kind in ("text/plain", "text/markdown", "text/html")]
    return "\n".join(parts)


def prose_numbers(nb) -> list[tuple[int, str, str]]:
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        text = REPORTED.sub("", NOT_PROSE.sub("", cell.source))
        for match in DECIMAL.finditer(text):
            context = " ".join(text[max(0, match.start() - 50):match.end() + 10].split())
            found.append((index, match.group(), context))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_number_in_the_prose_is_printed_by_the_stored_run(path):
    nb = nbformat.read(path, as_version=4)
    printed = printed_text(nb)
    gpu_runs = {Path(run["path"]).stem: run for run in measured_runs()}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            printed += "".join("\n" + format_measured(gpu_runs[name]) for name in GPU_RECORD.findall(cell.source))
    missing = [f"cell {i}: {number} in '...{context}...'"
               for i, number, context in prose_numbers(nb) if number not in printed]
    assert not missing, ("numbers in the prose that the stored outputs do not print (re-read the "
                         "outputs and update the text):\n" + "\n".join(missing))


def test_the_check_finds_a_number_the_outputs_do_not_print():
    cell = nbformat.v4.new_code_cell("print(0.886)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="test acc 0.886\n")]
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("It reaches 0.886, then 0.871. With `LR = 0.05` and "
                                      "$\\alpha = 0.25$, the paper's 0.992 (reported) differs."),
        cell])
    numbers = [number for _, number, _ in prose_numbers(nb)]
    assert numbers == ["0.886", "0.871"]
    assert "0.886" in printed_text(nb) and "0.871" not in printed_text(nb)
