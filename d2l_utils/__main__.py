"""Command line: ``python -m d2l_utils fetch-data | store-outputs NOTEBOOK...``."""

from __future__ import annotations

import argparse
import sys

from .data import CorruptDataError, DataNotFoundError, fetch_fashion_mnist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d2l_utils")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch-data", help="find, download or install Fashion-MNIST and verify it")
    fetch.add_argument("--root", help="a folder that holds (or should hold) the four IDX files")
    store = commands.add_parser("store-outputs", help="re-run notebooks (quick profile, CPU) and save "
                                "their outputs in place")
    store.add_argument("notebooks", nargs="+", help="paths of .ipynb files")
    args = parser.parse_args(argv)
    if args.command == "fetch-data":
        try:
            directory = fetch_fashion_mnist(args.root)
        except (DataNotFoundError, CorruptDataError) as err:
            print(err, file=sys.stderr)
            return 1
        print(f"Fashion-MNIST verified in {directory}")
    elif args.command == "store-outputs":
        from .notebooks import store_outputs
        for path in args.notebooks:
            print(f"running {path} ...", flush=True)
            store_outputs(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
