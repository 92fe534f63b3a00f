"""One database and one least-privilege login per application on the shared PostgreSQL instance, idempotently.

`reconcile_app` brings the server to this state, whatever it finds (nothing, a half-made earlier run, a rotated
password, a database created by hand, revoked grants):
- a role named after the app with LOGIN, no CREATEDB / CREATEROLE, and the password of the app's secret;
- a database owned by that role, that PUBLIC may not connect to (no app reaches another app's data);
- the database's `public` schema usable and writable by the role (PostgreSQL 15+ no longer grants CREATE on it to
  PUBLIC).
Passwords never reach the server in clear text: the role gets a SCRAM-SHA-256 verifier computed here, so no
statement log can show one. Nothing is ever dropped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from pg8000.native import Connection, identifier, literal

SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
FORBIDDEN_ATTRIBUTES = ("rolsuper", "rolreplication", "rolbypassrls")


class BootstrapError(Exception):
    """A state the bootstrap must not repair silently (bad secret document, an over-privileged role)."""


@dataclass(frozen=True)
class Login:
    """What an app's `<prefix>/<app>/database` secret holds."""

    host: str
    port: int
    dbname: str
    username: str
    password: str

    @classmethod
    def from_document(cls, document: object, source: str) -> Login:
        if not isinstance(document, dict):
            raise BootstrapError(f"{source}: expected a JSON object")
        missing = [key for key in ("host", "port", "dbname", "username", "password") if not document.get(key)]
        if missing:
            raise BootstrapError(f"{source}: missing field(s) {', '.join(missing)}")
        for key in ("dbname", "username"):
            if not NAME_RE.match(str(document[key])):
                raise BootstrapError(f"{source}: {key} {document[key]!r} is not a lower-case PostgreSQL name")
        try:
            port = int(document["port"])
        except (TypeError, ValueError):
            raise BootstrapError(f"{source}: port {document['port']!r} is not a number") from None
        return cls(str(document["host"]), port, str(document["dbname"]), str(document["username"]), str(document["password"]))

    def url(self) -> str:
        """The URL Coder (lib/pq), LiteLLM and Langfuse (Prisma) read: TLS required, every part URL-encoded."""
        user, password, dbname = (quote(value, safe="") for value in (self.username, self.password, self.dbname))
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{dbname}?sslmode=require"


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / RFC 7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def tls_context() -> ssl.SSLContext:
    """`sslmode=require`: always encrypted (TLS 1.2+), as `rds.force_ssl=1` demands; the apps connect the same way."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


Connect = Callable[[str], Connection]  # database name -> a connection as the administrator


def _one(connection: Connection, sql: str, **params) -> list | None:
    rows = connection.run(sql, **params)
    return rows[0] if rows else None


def _password_works(login: Login, connect_as: Callable[[Login], Connection] | None) -> bool:
    if connect_as is None:
        return False
    try:
        connect_as(login).close()
        return True
    except Exception:  # wrong password, no LOGIN, no CONNECT: the role needs repair
        return False


def reconcile_app(connect: Connect, login: Login, connect_as: Callable[[Login], Connection] | None = None) -> list[str]:
    """Create or repair the app's role and database. Returns what changed (empty when nothing had to)."""
    changes: list[str] = []
    role, database = identifier(login.username), identifier(login.dbname)
    admin = connect("postgres")
    try:
        found = _one(
            admin,
            "SELECT rolcanlogin, rolcreatedb, rolcreaterole, rolsuper, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = :name",
            name=login.username,
        )
        version = int(_one(admin, "SHOW server_version_num")[0])
        if found is None:
            admin.run(f"CREATE ROLE {role} WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD {literal(scram_verifier(login.password))}")
            changes.append("role created")
        else:
            can_login, create_db, create_role, *forbidden = found
            if any(forbidden):
                names = [name for name, value in zip(FORBIDDEN_ATTRIBUTES, forbidden, strict=True) if value]
                raise BootstrapError(f"role {login.username} has {', '.join(names)}: refusing to use it as an app login")
            # PostgreSQL 16: a CREATEROLE login may change only the roles it administers (ADMIN OPTION; the role's
            # creator has it). 15 lets it change any role that is not a superuser.
            if version >= 160000 and not _one(
                admin, "SELECT pg_has_role(current_user, :name, 'MEMBER WITH ADMIN OPTION')", name=login.username
            )[0]:
                raise BootstrapError(
                    f"role {login.username} exists, but this administrator does not administer it (PostgreSQL 16: no "
                    f"ADMIN OPTION on the role), so it can neither check nor repair it. Whoever created the role runs "
                    f"GRANT {role} TO <this administrator> WITH ADMIN OPTION (or drops the role), then the deploy is retried"
                )
            if not can_login or create_db or create_role:
                admin.run(f"ALTER ROLE {role} WITH LOGIN NOCREATEDB NOCREATEROLE")
                changes.append("role attributes reset")
            if not _password_works(login, connect_as):
                admin.run(f"ALTER ROLE {role} WITH PASSWORD {literal(scram_verifier(login.password))}")
                changes.append("password set")

        # The administrator must be able to act as the role to give it a database. PostgreSQL 16 (RDS) splits
        # membership into ADMIN / INHERIT / SET options and CREATE DATABASE ... OWNER needs SET; 15 has no options.
        privilege, grant = ("SET", f"GRANT {role} TO CURRENT_USER WITH SET TRUE") if version >= 160000 else (
            "MEMBER",
            f"GRANT {role} TO CURRENT_USER",
        )
        if not _one(admin, f"SELECT pg_has_role(current_user, :name, '{privilege}')", name=login.username)[0]:
            admin.run(grant)
            changes.append("administrator may act as the role")

        owner = _one(admin, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :name", name=login.dbname)
        if owner is None:
            admin.run(f"CREATE DATABASE {database} OWNER {role}")
            changes.append("database created")
        elif owner[0] != login.username:
            admin.run(f"ALTER DATABASE {database} OWNER TO {role}")
            changes.append(f"database owner changed from {owner[0]}")

        public_connect = _one(
            admin, "SELECT has_database_privilege('public', :name, 'CONNECT')", name=login.dbname
        )[0]
        if public_connect:
            admin.run(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")
            changes.append("PUBLIC access to the database revoked")
    finally:
        admin.close()

    inside = connect(login.dbname)
    try:
        usage, create = _one(
            inside,
            "SELECT has_schema_privilege(:name, 'public', 'USAGE'), has_schema_privilege(:name, 'public', 'CREATE')",
            name=login.username,
        )
        if not (usage and create):
            inside.run(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
            changes.append("schema public privileges granted")
    finally:
        inside.close()
    return changes
