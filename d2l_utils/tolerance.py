"""Comparing a notebook's outputs with its stored ones, exactly or within measured tolerances.

PyTorch picks its CPU kernels by processor (ATen's vectorised code, oneDNN's
convolutions, MKL's matrix products), and each adds in its own order, so a
training log is never bit-identical on another machine. What a cell prints
is therefore split into words and numbers (after the sanitizer has removed
timings). The words must always match; each number must match exactly unless
the cell's metadata gives it a *band*: a tolerance measured by
``python -m d2l_utils calibrate``, which reruns the chapter under other
numerics and seeds (see ``d2l_utils.notebooks.calibrate``).

The rule, for a number that some numerics variant moved::

    tolerance = max(SIGMAS x standard deviation, largest deviation seen, one unit of the last digit)

where the standard deviation and the deviations are those of every run made
for the calibration, the stored one included. A number that no numerics
variant moved (a shape, a count, a from-scratch check that is exact by
construction) has no band and is compared letter by letter. Seeds count only
in cells where some numerics variant moved a number (training logs): there
every number a seed moves gets a band, since another processor may move it
too; elsewhere a seed changes what is printed (the seed itself), not a result.
"""

from __future__ import annotations

import copy
import math
import re
import statistics
from itertools import zip_longest
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SIGMAS", "METADATA_KEY", "SKIP_COMPARE", "Band", "StaleCalibration", "fields",
           "split_numbers", "band_for", "cell_bands", "align_outputs", "sanitizer"]

SIGMAS = 4
METADATA_KEY = "d2l_tolerance"
# What nbval leaves out of its comparison by default (images included).
SKIP_COMPARE = frozenset({"metadata", "traceback", "prompt_number", "output_type", "name",
                          "execution_count", "application/vnd.jupyter.widget-view+json",
                          "image/png", "image/jpeg"})
# A sign is part of its number: "+0.0034" and "-0.0089" are two values of one printed
# quantity (a difference, a gap), not one number behind two different words.
NUMBER = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
SPACES = re.compile(r"[ \t]+")


class StaleCalibration(AssertionError):
    """A cell's bands were measured around other stored outputs than the ones it holds now."""


def sanitizer(config_text: str) -> Callable[[str], str]:
    """The sanitizer nbval builds from a ``--nbval-sanitize-with`` file, as a function."""
    from nbval.plugin import get_sanitize_patterns

    patterns = [(re.compile(regex), replace) for regex, replace in get_sanitize_patterns(config_text)]

    def sanitize(text: str) -> str:
        for regex, replace in patterns:
            text = regex.sub(replace, text)
        return text
    return sanitize


def _coalesced(outputs: Sequence[Any]) -> list:
    from nbval.plugin import coalesce_streams
    return coalesce_streams(copy.deepcopy(list(outputs)))


def fields(outputs: Sequence[Any], sanitize: Callable[[str], str]) -> list[tuple[tuple, str]]:
    """The texts nbval compares for a cell, in order, as ``(where, sanitized text)`` pairs.

    Streams of one name are joined (as nbval does); images are left out.
    ``where`` is ``(output index, key)`` or ``(output index, "data", mime type)``.
    """
    found = []
    for i, output in enumerate(_coalesced(outputs)):
        for key, value in output.items():
            if key in SKIP_COMPARE:
                continue
            if key == "data":
                found += [((i, "data", mime), sanitize(text)) for mime, text in value.items()
                          if mime not in SKIP_COMPARE and isinstance(text, str)]
            elif isinstance(value, str):
                found.append(((i, key), sanitize(value)))
    return found


def split_numbers(text: str) -> tuple[list[str], list[str]]:
    """``text`` as its words (the text between numbers, runs of spaces as one) and its numbers."""
    return [SPACES.sub(" ", w) for w in NUMBER.split(text)], NUMBER.findall(text)


def _value(number: str) -> float:
    return float(number.replace(",", ""))


def _last_digit_unit(number: str) -> float:
    """One unit of the last printed digit: 0.001 for ``0.790``, 1 for ``12,345``, 1e-4 for ``1.0e-3``."""
    mantissa, _, exponent = number.replace(",", "").lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


@dataclass(frozen=True)
class Band:
    """The measured tolerance of one printed number: its index in the cell, what is stored, the spread."""
    index: int
    stored: str
    std: float
    max_deviation: float
    tolerance: float

    def as_metadata(self) -> dict[str, Any]:
        return {"index": self.index, "stored": self.stored, "std": _round_up(self.std),
                "max_deviation": _round_up(self.max_deviation), "tolerance": _round_up(self.tolerance)}

    @classmethod
    def from_metadata(cls, entry: Mapping[str, Any]) -> "Band":
        return cls(int(entry["index"]), str(entry["stored"]), float(entry["std"]),
                   float(entry["max_deviation"]), float(entry["tolerance"]))


def _round_up(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant digits, never downwards (a band is not narrowed by rounding)."""
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(abs(x))))
    return math.ceil(x * scale - 1e-9) / scale  # - 1e-9: 0.010000000000000009 stays 0.01


def band_for(index: int, stored: str, others: Sequence[str]) -> Band:
    """The band of one number from its stored value and its values in the other runs."""
    values = [_value(stored)] + [_value(v) for v in others]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    deviation = max((abs(v - values[0]) for v in values[1:]), default=0.0)
    tolerance = max(SIGMAS * std, deviation, _last_digit_unit(stored))
    return Band(index, stored, std, deviation, tolerance)


@dataclass
class CellCalibration:
    """What the calibration found for one code cell."""
    bands: list[Band] = field(default_factory=list)
    numbers: int = 0
    problems: list[str] = field(default_factory=list)  # variants whose words differ from the stored
    seeds_left_out: list[str] = field(default_factory=list)  # seed runs that printed other words


def _numbers_if_same_words(ref: list[tuple[tuple, str]], run: list[tuple[tuple, str]]) -> list[str] | str:
    """The run's numbers in order, or a description of how its words differ from the stored ones."""
    if [where for where, _ in ref] != [where for where, _ in run]:
        return "prints other outputs"
    numbers = []
    for (where, ref_text), (_, run_text) in zip(ref, run):
        ref_words, _ = split_numbers(ref_text)
        run_words, run_numbers = split_numbers(run_text)
        if ref_words != run_words:
            before, after = next((r, w) for r, w in zip_longest(ref_words, run_words, fillvalue="")
                                 if r != w)
            return f"prints other words in output {where[0]}: {before.strip()[:50]!r} became {after.strip()[:50]!r}"
        numbers += run_numbers
    return numbers


def cell_bands(stored: Sequence[Any], numerics: Mapping[str, Sequence[Any]],
               seeds: Mapping[str, Sequence[Any]], sanitize: Callable[[str], str]) -> CellCalibration:
    """Bands of one code cell from its stored outputs and its outputs under each variant.

    ``numerics`` maps a variant's name (another instruction set, another thread
    count, ...) to the cell's outputs in that run; ``seeds`` the same for runs
    with another seed. A numerics variant whose words differ is a problem (the
    cell prints something that no tolerance can compare); a seed run whose
    words differ is left out of this cell.
    """
    ref = fields(stored, sanitize)
    ref_numbers = [n for _, text in ref for n in split_numbers(text)[1]]
    result = CellCalibration(numbers=len(ref_numbers))
    moved_by_numerics, by_seed = [], []
    for name, outputs in numerics.items():
        found = _numbers_if_same_words(ref, fields(outputs, sanitize))
        if isinstance(found, str):
            result.problems.append(f"{name}: {found}")
        else:
            moved_by_numerics.append(found)
    for name, outputs in seeds.items():
        found = _numbers_if_same_words(ref, fields(outputs, sanitize))
        if isinstance(found, str):
            result.seeds_left_out.append(f"{name}: {found}")
        else:
            by_seed.append(found)
    # A cell in which some variant moved a number is numerically sensitive (a training log):
    # there every number a seed moves gets a band too, since another processor may move it.
    sensitive = any(run[i] != n for run in moved_by_numerics for i, n in enumerate(ref_numbers))
    for i, stored_number in enumerate(ref_numbers):
        others = [run[i] for run in moved_by_numerics] + ([run[i] for run in by_seed] if sensitive else [])
        if all(n == stored_number for n in others):
            continue
        result.bands.append(band_for(i, stored_number, others))
    return result


def align_outputs(test: Sequence[Any], ref: Sequence[Any], bands: Sequence[Band],
                  sanitize: Callable[[str], str]) -> tuple[list, list]:
    """Sanitized copies of ``test`` and ``ref`` where each number of ``test`` within its band is the stored one.

    An exact comparison of the two results then fails only on a changed word,
    a changed output, a number without a band that differs, or a number out
    of its band. Raises ``StaleCalibration`` when a band's stored value is not
    the number the stored outputs hold at its index (the outputs were stored
    again after the calibration).
    """
    test, ref = _sanitized(test, sanitize), _sanitized(ref, sanitize)
    ref_fields, test_fields = fields(ref, lambda s: s), fields(test, lambda s: s)
    ref_numbers = [n for _, text in ref_fields for n in split_numbers(text)[1]]
    tolerance = [0.0] * len(ref_numbers)
    for band in bands:
        if band.index >= len(ref_numbers) or ref_numbers[band.index] != band.stored:
            held = ref_numbers[band.index] if band.index < len(ref_numbers) else "nothing"
            raise StaleCalibration(
                f"number {band.index} of this cell was calibrated as {band.stored!r} but the stored "
                f"output holds {held!r}: run `python -m d2l_utils calibrate` on the notebook after "
                f"`make outputs`")
        tolerance[band.index] = band.tolerance
    if isinstance(_numbers_if_same_words(ref_fields, test_fields), str):
        return test, ref  # other words: the exact comparison reports them
    k = 0
    for (where, ref_text), (_, test_text) in zip(ref_fields, test_fields):
        ref_words, ref_nums = split_numbers(ref_text)
        _, test_nums = split_numbers(test_text)
        merged = []
        for t, r in zip(test_nums, ref_nums):
            ok = t == r or abs(_value(t) - _value(r)) <= tolerance[k]
            merged.append(r if ok else t)
            k += 1
        text = ref_words[0] + "".join(n + w for n, w in zip(merged, ref_words[1:]))
        _put(test, where, text)
        _put(ref, where, ref_words[0] + "".join(n + w for n, w in zip(ref_nums, ref_words[1:])))
    return test, ref


def _sanitized(outputs: Sequence[Any], sanitize: Callable[[str], str]) -> list:
    result = _coalesced(outputs)
    for output in result:
        for key, value in output.items():
            if key == "data":
                for mime, text in value.items():
                    if isinstance(text, str) and mime not in SKIP_COMPARE:
                        value[mime] = sanitize(text)
            elif isinstance(value, str) and key not in SKIP_COMPARE:
                output[key] = sanitize(value)
    return result


def _put(outputs: list, where: tuple, text: str) -> None:
    if where[1] == "data":
        outputs[where[0]]["data"][where[2]] = text
    else:
        outputs[where[0]][where[1]] = text
