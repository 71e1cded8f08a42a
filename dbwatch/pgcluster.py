"""A throwaway local PostgreSQL cluster (initdb + pg_ctl in a temp dir) for the demo and the tests."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self
from urllib.parse import quote

__all__ = ["Cluster", "ClusterError", "find_bindir", "free_port"]


class ClusterError(RuntimeError):
    """The cluster could not be created, started or stopped."""


def find_bindir(version: str | None = None) -> Path:
    """Where initdb/pg_ctl live: Debian keeps them in /usr/lib/postgresql/<ver>/bin, off PATH."""
    env = os.environ.get("DBWATCH_PG_BINDIR")
    if env:
        return Path(env)
    pattern = f"/usr/lib/postgresql/{version or '*'}/bin/initdb"
    found = sorted(glob.glob(pattern), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ClusterError("initdb not found: install Debian's postgresql package (apt-get install postgresql)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Cluster:
    """initdb into a temp dir, start on a free loopback port, stop and delete on exit.

    As root the server runs as the `postgres` user (initdb refuses root). The superuser `postgres`
    connects without a password over the cluster's private Unix socket directory only; TCP uses scram.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        max_connections: int = 100,
        settings: dict[str, str] | None = None,
        version: str | None = None,
    ) -> None:
        self.bindir = find_bindir(version)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.max_connections = max_connections
        self.settings = settings or {}
        self.base = Path(tempfile.mkdtemp(prefix="dbwatch-pg-"))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "server.log"
        self._as_user: str | None = None
        if os.geteuid() == 0:
            self._as_user = "postgres"
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterError("running as root needs a 'postgres' user (Debian's postgresql package)") from None
            self.sockdir.mkdir()
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chown(self.sockdir, pw.pw_uid, pw.pw_gid)
        else:
            self.sockdir.mkdir()

    def _run(self, *argv: str | Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in argv]
        if self._as_user:
            cmd = ["runuser", "-u", self._as_user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base)
        if check and proc.returncode != 0:
            raise ClusterError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc

    def init(self) -> Self:
        """Run initdb and write the server settings."""
        self._run(
            self.bindir / "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        conf = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockdir}'",
            "max_connections": str(self.max_connections),
            "superuser_reserved_connections": "3",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "password_encryption": "scram-sha-256",
            **self.settings,
        }
        body = "".join(f"{k} = {v}\n" for k, v in conf.items())
        conf_path = self.datadir / "postgresql.auto.conf"
        self._append(conf_path, body)
        return self

    def _append(self, path: Path, text: str) -> None:
        if self._as_user:
            self._run("sh", "-c", f"cat >> '{path}' <<'DBWATCH_EOF'\n{text}DBWATCH_EOF\n")
        else:
            with path.open("a") as f:
                f.write(text)

    def start(self) -> Self:
        """Start the server and wait until it accepts connections."""
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast, smart or immediate)."""
        self._run(self.bindir / "pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def kill9(self) -> None:
        """SIGKILL the postmaster, as a crash would."""
        pid = self.postmaster_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def postmaster_pid(self) -> int | None:
        """PID of the running postmaster, or None."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over the private Unix socket; returns unaligned output."""
        proc = self._run(
            self.bindir / "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.sockdir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        )
        return proc.stdout.strip()

    def superuser_kwargs(self, database: str = "postgres") -> dict[str, object]:
        """asyncpg.connect() arguments for the superuser over the Unix socket."""
        return {"host": str(self.sockdir), "port": self.port, "user": "postgres", "database": database}

    def dsn(self, user: str, password: str, database: str = "postgres") -> str:
        """A TCP URL DSN for a role on this cluster."""
        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{database}"

    def cleanup(self) -> None:
        """Stop the server immediately and delete the temp dir."""
        if self.postmaster_pid():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.init().start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
