"""Command line of the course.

    python -m d2l_utils fetch-data
    python -m d2l_utils run notebooks/06_lenet.ipynb --profile full --device cuda -p EPOCHS 5
    python -m d2l_utils full-runs                 # every chapter's full profile on a CUDA GPU
    python -m d2l_utils full-estimates            # the estimated GPU time of each chapter's full run
    python -m d2l_utils full-measured             # the full runs measured on a GPU (results/full/cuda/)
    python -m d2l_utils store-outputs notebooks/06_lenet.ipynb
    python -m d2l_utils calibrate notebooks/06_lenet.ipynb
"""

from __future__ import annotations

import argparse
import sys

from .data import CorruptDataError, DataNotFoundError, fetch_fashion_mnist
from .profile import DEVICES, PROFILES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d2l_utils")
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch-data", help="find, download or install Fashion-MNIST and verify it")
    fetch.add_argument("--root", help="a folder that holds (or should hold) the four IDX files")

    run = commands.add_parser("run", help="execute notebooks under a profile into _build/runs "
                              "(the committed notebooks are not changed)")
    run.add_argument("notebooks", nargs="+", help="paths of .ipynb files")
    run.add_argument("--profile", required=True, choices=PROFILES)
    run.add_argument("--device", default="auto", choices=DEVICES)
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                     metavar=("NAME", "VALUE"), help="override a notebook parameter")
    run.add_argument("--output-dir", default="_build/runs")

    full = commands.add_parser("full-runs", help="run the full profile of every chapter (or of the "
                               "notebooks named) on a GPU; the records go to results/full/<device>/")
    full.add_argument("notebooks", nargs="*", help="paths of .ipynb files (default: every chapter)")
    full.add_argument("--device", default="cuda", choices=[d for d in DEVICES if d != "auto"])
    full.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                      metavar=("NAME", "VALUE"), help="override a notebook parameter")
    full.add_argument("--output-dir", default="_build/runs")

    commands.add_parser("full-estimates", help="print the estimated GPU time of each chapter's full run "
                        "(a Markdown table, the one in the README)")
    commands.add_parser("full-measured", help="print the full runs measured on a CUDA GPU, from the records "
                        "in results/full/cuda/ (a Markdown table, the one in the README)")

    store = commands.add_parser("store-outputs", help="re-run notebooks (quick profile, CPU) and save "
                                "their outputs in place")
    store.add_argument("notebooks", nargs="+", help="paths of .ipynb files")

    calibrate = commands.add_parser("calibrate", help="rerun notebooks under other numerics and seeds "
                                    "and store each printed number's measured tolerance")
    calibrate.add_argument("notebooks", nargs="+", help="paths of .ipynb files (after make outputs)")
    calibrate.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    calibrate.add_argument("--runs-dir", default="_build/calibration",
                           help="where the executed variants are kept (default _build/calibration)")
    calibrate.add_argument("--sanitize-with", default="tests/sanitize.cfg",
                           help="the nbval sanitizer file (default tests/sanitize.cfg)")
    calibrate.add_argument("--timeout", type=float, default=1800,
                           help="seconds one run may take before the calibration fails (default 1800; a "
                           "two-thread run beside other runs on a 2-core machine can need more)")
    calibrate.add_argument("--keep-seed-records", action="store_true",
                           help="copy the seed runs' records (...--seed-1.json, ...--seed-2.json) of each "
                           "notebook calibrated without error to results/, as `run -p SEED n` would write them")

    args = parser.parse_args(argv)
    if args.command == "fetch-data":
        try:
            directory = fetch_fashion_mnist(args.root)
        except (DataNotFoundError, CorruptDataError) as err:
            print(err, file=sys.stderr)
            return 1
        print(f"Fashion-MNIST verified in {directory}")
    elif args.command in ("run", "full-runs"):
        from .notebooks import parse_value, run_full_profile, run_notebooks
        parameters = {name: parse_value(value) for name, value in args.parameter}
        try:
            if args.command == "run":
                outcomes = run_notebooks(args.notebooks, profile=args.profile, device=args.device,
                                         parameters=parameters, output_dir=args.output_dir)
            else:
                outcomes = run_full_profile(args.notebooks, device=args.device, parameters=parameters,
                                            output_dir=args.output_dir)
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        failed = [o for o in outcomes if o.error]
        for o in outcomes:
            print(f"{'FAILED' if o.error else 'ok':6} {o.notebook} -> {o.output}"
                  + (f"\n       {o.error}" if o.error else ""))
        print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
        return 1 if failed else 0
    elif args.command == "full-estimates":
        from .estimate import estimates_table
        print(estimates_table())
    elif args.command == "full-measured":
        from .estimate import measured_table
        print(measured_table())
    elif args.command == "store-outputs":
        from .notebooks import record_digests, store_outputs
        from .results import results_dir
        for path in args.notebooks:
            print(f"running {path} ...", flush=True)
            before = record_digests(results_dir())
            store_outputs(path)
            _remind_of_readers(before, [path])
    elif args.command == "calibrate":
        return _calibrate(args)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .notebooks import calibrate, record_digests
    from .results import results_dir
    before = record_digests(results_dir())
    try:
        outcomes = calibrate(args.notebooks, runs_dir=args.runs_dir, sanitize_file=args.sanitize_with,
                             jobs=args.jobs, keep_seed_records=args.keep_seed_records,
                             timeout=args.timeout)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bad = 0
    for o in outcomes:
        if o.error:
            bad += 1
            print(f"FAILED {o.notebook}: {o.error} (not written)")
            continue
        print(f"ok     {o.notebook}: {sum(map(len, o.bands.values()))} numbers in "
              f"{len(o.bands)} cells get bands")
        for cell, bands in o.bands.items():
            widest = max(bands, key=lambda b: b.tolerance / max(abs(float(b.stored.replace(',', ''))), 1e-12))
            print(f"       code cell {cell}: {len(bands)} bands, widest +-{widest.tolerance:.3g} "
                  f"around {widest.stored} (std {widest.std:.2g})")
        for note in o.notes or ():
            print(f"       note: {note}")
        if args.keep_seed_records:
            for record in o.seed_records:
                print(f"       kept the seed run's record {record}")
        for problem in o.problems:
            bad += 1
            print(f"       PROBLEM {problem}")
    _remind_of_readers(before, args.notebooks)
    return 1 if bad else 0


def _remind_of_readers(before: dict[str, str], notebooks: list[str]) -> None:
    """Print which records changed since ``before`` and which notebooks beside ``notebooks`` read records."""
    from pathlib import Path

    from .notebooks import readers_reminder, record_digests, record_readers
    from .results import results_dir
    readers = sorted({r for path in notebooks for r in record_readers(Path(path).parent)})
    reminder = readers_reminder(before, record_digests(results_dir()), readers)
    if reminder:
        print(reminder, flush=True)


if __name__ == "__main__":
    sys.exit(main())
