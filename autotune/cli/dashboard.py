"""`autotune dashboard`: watch studies in a browser (optuna-dashboard on the storage `autotune tune` used).

Examples:
    autotune dashboard                                   # .autotune/studies.journal, http://127.0.0.1:8080/dashboard/
    autotune dashboard --storage postgresql://user:password@db:5432/autotune --port 8090
"""

from __future__ import annotations

import argparse
import signal
import sys


def register(subparsers) -> None:
    from autotune.cli._common import HelpFormatter

    parser = subparsers.add_parser(
        "dashboard", help="watch studies in a browser: trials, the Pareto front, edit thumbnails, preset notes",
        description="Serve optuna-dashboard on the study storage that `autotune tune` used, with the edited images "
        "the tuner keeps for each front trial and the provenance of each study's preset (as notes). Listens on "
        "127.0.0.1 unless told otherwise; stop it with Ctrl-C (or SIGTERM).",
        formatter_class=HelpFormatter)
    parser.add_argument("--storage", help="a .journal path or postgresql://...; unset: <project-dir>/studies.journal")
    parser.add_argument("--project-dir", default=".autotune", help="the --project-dir `autotune tune` used")
    parser.add_argument("--artifact-dir", help="folder of the edit images; unset: the one the studies recorded, "
                        "else <project-dir>/artifacts")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 shows the studies to "
                        "anyone who can reach this machine (the dashboard has no login)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on; 0 takes any free one")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from autotune.report.dashboard import dashboard_app, serve, url

    board = dashboard_app(args.storage, project_dir=args.project_dir, artifact_dir=args.artifact_dir)
    server = serve(board, args.host, args.port)
    shown = ", ".join(board.studies[:5]) + (f" and {len(board.studies) - 5} more" if len(board.studies) > 5 else "")
    print(f"optuna-dashboard on {board.storage}: {len(board.studies)} study(ies){': ' + shown if shown else ''}")
    print(f"edit images from {board.artifacts}" if board.artifacts else "no edit images found (no artifact folder)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this machine sees the studies",
              file=sys.stderr)
    print(f"open {url(args.host if args.host not in ('0.0.0.0', '::') else '127.0.0.1', server.server_port)} "
          "(Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's or a script's stop ends it as Ctrl-C does
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped")
    finally:
        server.server_close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
