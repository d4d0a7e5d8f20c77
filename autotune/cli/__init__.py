"""The `autotune` command. Each subcommand lives in its own module with a `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from autotune import __version__
from autotune.errors import AutotuneError

# Subcommand modules, in the order `--help` lists them; a module that is missing is skipped.
_SUBCOMMANDS = ("edit", "evaluate", "tune", "presets", "report", "dashboard", "bench", "shapes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotune",
        description="Tune source/target classifier-free guidance for inversion-based image editing, per edit category.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show debug logs and full tracebacks")
    parser.add_argument("--version", action="version", version=f"autotune {__version__}")
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
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "forwards", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.forwarded = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler below, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`autotune presets show ... | head`): stop quietly, as `cat` does.
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a command stopped by a closed pipe
    except AutotuneError as exc:
        if args.verbose:
            raise
        print(f"autotune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autotune {args.command}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush does not raise a second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (e.g. captured by a test)
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
