"""A throwaway PostgreSQL cluster on 127.0.0.1, for the tests and the benchmarks.

Debian's server binaries (``postgresql``: scripts/test and bench/run install
it) run from a fresh data directory under a temporary directory, on a free port
of 127.0.0.1 only, with its socket in that directory: nothing is shared with any
other PostgreSQL on the machine. Each user gets a database of its own
(`PostgresCluster.new_database`). PostgreSQL refuses to run as root: as root,
the cluster runs as Debian's ``postgres`` user. The tests kill server
processes, never the machine, so their cluster skips fsync; the benchmarks'
(``durable=True``) keeps PostgreSQL's defaults, as a line host does.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

USER = "parley_test"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL's server is missing: scripts/test and bench/run"
                           " install it (apt-get install postgresql)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    def __init__(self, *, durable: bool = False, cpu: int | None = None,
                 quiet: bool = False) -> None:
        self.durable = durable
        # No autovacuum and rare checkpoints: it works only when asked, so that a benchmark
        # round that does not use it is not slowed by it on a core it shares.
        self.quiet = quiet
        self.cpu = cpu  # pinned to this CPU (taskset), with every backend it starts
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="parley-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as: list[str] = []
        self._count = 0
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {done.stdout}{done.stderr}")

    def start(self) -> PostgresCluster:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER,
                  "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port}"
                   f" -c unix_socket_directories={self.root} -c max_connections=200")
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if self.quiet:
            options += " -c autovacuum=off -c checkpoint_timeout=3600 -c max_wal_size=8GB"
        pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
        self._run(*pin, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "log"), "-o", options, "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pids(self) -> list[int]:
        """The cluster's processes now: the postmaster and its children (a benchmark
        reads what CPU they used)."""
        main = int((self.data / "postmaster.pid").read_text().split()[0])
        out = [main]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == main:
                    out.append(int(entry.name))
        return out

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; its URL. Its text sorts as a line host's usually does
        (ICU, en-US: ``'a-x' > 'a_x'``), not byte by byte, so that nothing here leans on
        a C locale."""
        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu'
                         " ICU_LOCALE 'en-US'")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
