"""Every exercise of a chapter is a sphinx-exercise block with a worked solution after it.

A chapter's exercises are ``{exercise}`` directives with a ``:label:``; each has
exactly one ``{solution}`` (or gated ``{solution-start}`` ... ``{solution-end}``
around executed code cells) naming that label, hidden by default (``:class:
dropdown``), placed after it. The book's build then numbers them and hides the
solutions until the reader opens them.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# ```{exercise} or :::{exercise}, then its options
DIRECTIVE = re.compile(r"^(?:```+|:::+)\{(exercise|solution|solution-start|solution-end)\}([^\n]*)\n((?::[\w-]+:[^\n]*\n)*)",
                       re.M)


def blocks(nb) -> list[dict]:
    """The exercise and solution directives of a notebook, in order, with their cell index."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for match in DIRECTIVE.finditer(cell.source + "\n"):
            kind, argument, options = match.groups()
            opts = dict(re.findall(r"^:([\w-]+):[ \t]*([^\n]*)$", options, re.M))
            found.append({"kind": kind, "argument": argument.strip(), "options": opts, "cell": index})
    return found


def problems(nb) -> list[str]:
    found, issues = blocks(nb), []
    exercises = [b for b in found if b["kind"] == "exercise"]
    labels = [b["options"].get("label") for b in exercises]
    if None in labels:
        issues.append("an exercise has no :label:")
    if len(set(labels)) != len(labels):
        issues.append(f"exercise labels repeat: {labels}")
    solutions = [b for b in found if b["kind"] in ("solution", "solution-start")]
    for label, exercise in zip(labels, exercises):
        mine = [s for s in solutions if s["argument"] == label]
        if len(mine) != 1:
            issues.append(f"exercise {label!r} has {len(mine)} solutions, not one")
        elif found.index(mine[0]) < found.index(exercise):
            issues.append(f"the solution of {label!r} comes before the exercise")
        elif "dropdown" not in mine[0]["options"].get("class", "").split():
            issues.append(f"the solution of {label!r} is not hidden (:class: dropdown)")
    orphans = [s["argument"] for s in solutions if s["argument"] not in labels]
    if orphans:
        issues.append(f"solutions of no exercise: {orphans}")
    heading = next((i for i, c in enumerate(nb.cells)
                    if c.cell_type == "markdown" and re.search(r"^## Exercises\s*$", c.source, re.M)), None)
    if heading is None:
        issues.append("no '## Exercises' section")
    else:
        listed, in_solution = [], False
        for c in nb.cells[heading:]:
            if c.cell_type != "markdown":
                continue
            kinds = [m.group(1) for m in DIRECTIVE.finditer(c.source + "\n")]
            # A numbered list inside a gated solution (its prose between solution-start and
            # solution-end) is part of an answer, not an exercise.
            if (not kinds and not in_solution
                    and re.search(r"^\d+\. ", c.source.split("## Exercises")[-1], re.M)):
                listed.append(c.source)
            for kind in kinds:
                in_solution = {"solution-start": True, "solution-end": False}.get(kind, in_solution)
        if listed:
            issues.append(f"exercises written as a plain numbered list, without solutions: {listed[0][:80]!r}")
        if not exercises:
            issues.append("an Exercises section without {exercise} blocks")
    starts = sum(b["kind"] == "solution-start" for b in found)
    ends = sum(b["kind"] == "solution-end" for b in found)
    if starts != ends:
        issues.append(f"{starts} solution-start but {ends} solution-end")
    return issues


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_one_hidden_worked_solution_after_it(path):
    nb = nbformat.read(path, as_version=4)
    assert not problems(nb)


def _nb(*sources: str):
    """A notebook of Markdown cells, under an Exercises heading."""
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(s) for s in ("## Exercises",) + sources])


EXERCISE = "```{exercise}\n:label: ex-1\nDo it.\n```"


def test_the_check_finds_a_missing_a_visible_and_a_misplaced_solution():
    assert problems(_nb(EXERCISE)) == ["exercise 'ex-1' has 0 solutions, not one"]
    assert "not hidden" in problems(_nb(EXERCISE, "```{solution} ex-1\nDone.\n```"))[0]
    assert "comes before" in problems(_nb("```{solution} ex-1\n:class: dropdown\nDone.\n```", EXERCISE))[0]
    assert problems(_nb(EXERCISE, ":::{solution-start} ex-1\n:class: dropdown\n:::")) == \
        ["1 solution-start but 0 solution-end"]
    assert problems(_nb(EXERCISE, ":::{solution-start} ex-1\n:class: dropdown\n:::", ":::{solution-end}\n:::")) == []
    assert "plain numbered list" in problems(_nb("1. Do this.\n2. Do that."))[0]
    steps = "The answer in two steps:\n\n1. Count.\n2. Divide."
    assert problems(_nb(EXERCISE, ":::{solution-start} ex-1\n:class: dropdown\n:::", steps,
                        ":::{solution-end}\n:::")) == []
    assert "plain numbered list" in problems(_nb(EXERCISE, ":::{solution-start} ex-1\n:class: dropdown\n:::",
                                                 ":::{solution-end}\n:::", steps))[0]
    assert problems(_nb()) == ["an Exercises section without {exercise} blocks"]
    no_section = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("Text only.")])
    assert problems(no_section) == ["no '## Exercises' section"]
