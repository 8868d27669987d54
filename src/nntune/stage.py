"""What every stage script shares: argument parsing and turning user errors into a clear
message and exit code 2 instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from nntune.errors import NntuneError


def run_stage(main: Callable[[argparse.Namespace], None], doc: str | None, *args: str) -> None:
    """Parse ``args`` (the paths dvc.yaml passes) into a namespace and call ``main``."""
    parser = argparse.ArgumentParser(description=doc)
    for name in args:
        parser.add_argument(name)
    namespace = parser.parse_args()
    try:
        main(namespace)
    except NntuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
