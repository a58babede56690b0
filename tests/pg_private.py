"""A private, throw-away PostgreSQL server for fault tests: one that a test may stop and start at will.

The shared server of the machine (EXPORTER_TEST_POSTGRES_URL) must never be stopped by a test, so fault tests start
their own with ``initdb`` / ``pg_ctl`` on a free loopback port, with trust authentication, its socket and data in
a temporary folder, and fsync off (durability is not what is tested; speed is welcome). PostgreSQL refuses to run
as root: when the tests run as root the server runs as the ``postgres`` system user (``runuser``), which the Debian
package ``postgresql`` creates.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.helpers import free_port

DEBIAN_PACKAGE = "postgresql"
SERVER_USER = "postgres"


class PostgresUnavailable(Exception):
    """initdb / pg_ctl (or a user to run them as) are missing on this machine; the message says what to install."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl (or the ones on PATH)."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    raise PostgresUnavailable(
        "initdb and pg_ctl not found under /usr/lib/postgresql/*/bin nor on PATH: "
        f"install the Debian package {DEBIAN_PACKAGE!r} (apt-get install {DEBIAN_PACKAGE})"
    )


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` on 127.0.0.1:<free port>; :meth:`stop` / :meth:`start` simulate an outage."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.as_user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.as_user = pwd.getpwnam(SERVER_USER)
            except KeyError as exc:
                raise PostgresUnavailable(
                    f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as: "
                    f"install the Debian package {DEBIAN_PACKAGE!r} (it creates that user)"
                ) from exc
        # Under /tmp (world-traversable), not pytest's tmp_path: root's 0700 folders would lock the server user out.
        self.base = Path(tempfile.mkdtemp(prefix="exporter-pg-"))
        self.data = self.base / "data"
        self.logfile = self.base / "postgres.log"
        self.port = 0
        self.running = False
        if self.as_user is not None:
            os.chown(self.base, self.as_user.pw_uid, self.as_user.pw_gid)
        atexit.register(self.destroy)  # belt and braces: the fixture's teardown is the normal path

    # -- process plumbing ---------------------------------------------------------------------------------------
    def _run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user is not None:
            cmd = ["runuser", "-u", self.as_user.pw_name, "--", *cmd]
        proc = subprocess.run(cmd, cwd=self.base, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C"})
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n"
                f"--- server log ---\n{self.log()[-3000:]}"
            )
        return proc

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def init(self) -> PrivatePostgres:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                  "--no-sync")
        return self

    def _configure(self, port: int) -> None:
        settings = {
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
        }
        # postgresql.auto.conf is read last and wins; it is owned by the server user, appending keeps that owner.
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write("".join(f"{k} = {v}\n" for k, v in settings.items()))

    def start(self) -> PrivatePostgres:
        """Start (or restart on the same port); the first start picks a free port, retrying if it was taken."""
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            if not self.port:
                self.port = free_port()
                self._configure(self.port)
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start")
                self.running = True
                return self
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                self.port = 0  # the port was probably taken between free_port() and bind: pick another
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast") -> float:
        """Stop the server (waits until it is down); returns how long that took."""
        started = time.monotonic()
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False
        return time.monotonic() - started

    def destroy(self) -> None:
        """Stop the server if it runs and delete its folder; safe to call twice."""
        if self.running or (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=40)
            self.running = False
        shutil.rmtree(self.base, ignore_errors=True)

    # -- databases ----------------------------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "exporter_fault") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        from sqlalchemy import create_engine, text

        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)
