"""A real pgbouncer (Debian's package) on a loopback port in front of a throwaway cluster, for tests."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from dbwatch.pgcluster import free_port
from tests.helpers import stop_process


class Bouncer:
    """pgbouncer in transaction mode with one pool per given database; `user` may read SHOW POOLS/STATS."""

    def __init__(
        self, pg_host: str, pg_port: int, databases: list[str], user: str, password: str, pool_size: int = 2
    ) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user, self.password = user, password
        self.base = Path(tempfile.mkdtemp(prefix="dbwatch-pgb-"))
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        dbs = "".join(f"{d} = host={pg_host} port={pg_port} dbname={d}\n" for d in databases)
        (self.base / "users.txt").write_text(f'"{user}" "{password}"\n')
        (self.base / "pgbouncer.ini").write_text(
            f"[databases]\n{dbs}\n[pgbouncer]\n"
            f"listen_addr = {self.host}\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.base}/users.txt\n"
            f"stats_users = {user}\npool_mode = transaction\ndefault_pool_size = {pool_size}\n"
            f"max_client_conn = 100\nlogfile = {self.base}/pgbouncer.log\n"
        )
        self._argv = [binary, str(self.base / "pgbouncer.ini")]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            pw = pwd.getpwnam("postgres")
            for p in (self.base, *self.base.iterdir()):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self._argv = ["runuser", "-u", "postgres", "--", *self._argv]
        self._proc: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str, password: str | None = None) -> str:
        pw = quote(self.password if password is None else password, safe="")
        return f"postgresql://{quote(self.user, safe='')}:{pw}@{self.host}:{self.port}/{database}"

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return self
            except OSError:
                if self._proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("pgbouncer did not start")

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._proc is not None:
            stop_process(self._proc)
        shutil.rmtree(self.base, ignore_errors=True)
