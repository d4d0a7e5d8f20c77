"""The `autotune` command. Each subcommand lives in its own module with a `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from autotune.errors import AutotuneError

# Subcommand modules, in the order `--help` lists them; a module that is missing is skipped.
_SUBCOMMANDS = ("edit", "evaluate", "tune", "presets", "report", "bench", "shapes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotune",
        description="Tune source/target classifier-free guidance for inversion-based image editing, per edit category.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show debug logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(f"autotune.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"autotune.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Subcommands that forward their arguments to a module (`autotune shapes train|train-flow|measure`) set
    # `forward`: their REMAINDER takes everything from the first positional on, and argparse leaves option strings
    # before it unrecognised, so those go in front again (`autotune shapes measure --samples 10` would fail).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "forward", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = [*extra, *args.rest]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except AutotuneError as exc:
        if args.verbose:
            raise
        print(f"autotune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autotune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
