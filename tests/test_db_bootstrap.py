"""The database bootstrap against real PostgreSQL servers, Debian's and 16 (the RDS major version; TLS only, RDS-like
non-superuser administrator) and moto's Secrets Manager: first run, second run, password rotation, repair of a
half-made or tampered state."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from urllib.parse import unquote, urlsplit

import pytest
from pg8000.exceptions import DatabaseError, InterfaceError

from tests.cfn_server import ResponseRecorder
from tests.lambdas import load_handler
from tests.postgres_server import ADMIN

handler_module = load_handler("db_bootstrap")
bootstrap = load_handler("db_bootstrap", "bootstrap")

APPS = ("coder", "litellm", "langfuse")


@pytest.fixture
def clean_server(postgres):
    def drop_all():
        su = postgres.superuser()
        try:
            for app in APPS:
                su.run(f"DROP DATABASE IF EXISTS {app} WITH (FORCE)")
                su.run(f"DROP ROLE IF EXISTS {app}")
        finally:
            su.close()

    drop_all()
    yield postgres
    drop_all()


@pytest.fixture
def secrets(secrets_client, clean_server):
    """The Data layer's secrets as the bootstrap finds them: master login, three app logins without `url`."""
    master = secrets_client.create_secret(
        Name="staging/rds/master", SecretString=json.dumps({"username": ADMIN, "password": clean_server.admin_password})
    )["ARN"]
    apps = {}
    for app in APPS:
        document = {
            "engine": "postgres",
            "host": "127.0.0.1",
            "port": clean_server.port,
            "dbname": app,
            "username": app,
            "password": f"{app[:4]}Pw" + "x7" * 14,
        }
        apps[app] = secrets_client.create_secret(Name=f"staging/{app}/database", SecretString=json.dumps(document))["ARN"]
    return master, apps


def stored(client, arn) -> dict:
    return json.loads(client.get_secret_value(SecretId=arn)["SecretString"])


def connect_with_url(url: str):
    """Connect exactly as an app would from its `url` field (parsing the URL, TLS as sslmode=require)."""
    parts = urlsplit(url)
    assert parts.scheme == "postgresql" and parts.query == "sslmode=require"
    return bootstrap.Connection(
        unquote(parts.username),
        host=parts.hostname,
        port=parts.port,
        password=unquote(parts.password),
        database=parts.path.lstrip("/"),
        ssl_context=bootstrap.tls_context(),
        timeout=10,
    )


def run(client, secrets_arns):
    master, apps = secrets_arns
    return handler_module.reconcile_all(client, master, apps)


def test_first_run_creates_one_owned_database_and_login_per_app(secrets_client, secrets, clean_server):
    results = run(secrets_client, secrets)
    assert set(results) == set(APPS)
    for app in APPS:
        assert {"role created", "database created", "PUBLIC access to the database revoked", "secret url written"} <= set(
            results[app]
        )
    su = clean_server.superuser()
    try:
        for app in APPS:
            (row,) = su.run(
                "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
                "FROM pg_roles WHERE rolname = :n",
                n=app,
            )
            assert row == [True, False, False, False, False, False]
            assert su.run("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :n", n=app) == [[app]]
            # The password is stored as a SCRAM verifier, never as MD5 or clear text.
            assert su.run("SELECT rolpassword FROM pg_authid WHERE rolname = :n", n=app)[0][0].startswith("SCRAM-SHA-256$4096:")
    finally:
        su.close()

    for app in APPS:
        document = stored(secrets_client, secrets[1][app])
        assert document["url"] == (
            f"postgresql://{app}:{document['password']}@127.0.0.1:{clean_server.port}/{app}?sslmode=require"
        )
        connection = connect_with_url(document["url"])
        try:
            assert connection.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [[True]]
            connection.run("CREATE TABLE migration_probe (id int PRIMARY KEY)")  # the app can run its migrations
            assert connection.run("SELECT current_user, current_database()") == [[app, app]]
        finally:
            connection.close()


def test_an_app_cannot_reach_another_apps_database(secrets_client, secrets):
    run(secrets_client, secrets)
    litellm = stored(secrets_client, secrets[1]["litellm"])
    with pytest.raises(DatabaseError, match="permission denied for database"):
        connect_with_url(litellm["url"].replace("/litellm?", "/coder?"))


def test_second_run_changes_nothing_and_writes_no_secret_version(secrets_client, secrets):
    run(secrets_client, secrets)
    versions = {app: len(secrets_client.list_secret_version_ids(SecretId=arn)["Versions"]) for app, arn in secrets[1].items()}
    assert run(secrets_client, secrets) == {app: [] for app in APPS}
    assert versions == {
        app: len(secrets_client.list_secret_version_ids(SecretId=arn)["Versions"]) for app, arn in secrets[1].items()
    }


def test_rotated_password_is_applied_and_the_old_one_stops_working(secrets_client, secrets):
    run(secrets_client, secrets)
    arn = secrets[1]["coder"]
    before = stored(secrets_client, arn)
    secrets_client.put_secret_value(SecretId=arn, SecretString=json.dumps({**before, "password": "Rotated" + "9" * 25}))

    results = run(secrets_client, secrets)
    assert results["coder"] == ["password set", "secret url written"]
    assert results["litellm"] == [] and results["langfuse"] == []
    after = stored(secrets_client, arn)
    assert "Rotated" in after["url"] and before["password"] not in after["url"]
    connect_with_url(after["url"]).close()
    with pytest.raises(DatabaseError, match="password authentication failed"):
        connect_with_url(before["url"])


def test_repairs_a_half_made_or_tampered_state(secrets_client, secrets, clean_server):
    su = clean_server.superuser()
    try:
        # A login that cannot log in but may create databases, a database owned by the administrator and open to
        # PUBLIC, a schema the role may not write to.
        su.run("CREATE ROLE litellm NOLOGIN CREATEDB PASSWORD 'stale-password'")
        su.run(f"CREATE DATABASE litellm OWNER {ADMIN}")
        su.run("GRANT CONNECT ON DATABASE litellm TO PUBLIC")
        # Granted the way RDS would have it: the administrator created the role, so it administers it (on 16 the
        # creator holds ADMIN OPTION on the role it made).
        su.run(f"GRANT litellm TO {ADMIN} WITH ADMIN OPTION")
    finally:
        su.close()
    inside = clean_server.superuser("litellm")
    try:
        inside.run(f"ALTER SCHEMA public OWNER TO {ADMIN}")
        inside.run("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    finally:
        inside.close()

    changes = run(secrets_client, secrets)["litellm"]
    assert changes == [
        "role attributes reset",
        "password set",
        f"database owner changed from {ADMIN}",
        "PUBLIC access to the database revoked",
        "schema public privileges granted",
        "secret url written",
    ]
    connection = connect_with_url(stored(secrets_client, secrets[1]["litellm"])["url"])
    try:
        connection.run("CREATE TABLE spend_logs (id int)")
        assert connection.run(
            "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ) == [[False]]
    finally:
        connection.close()
    assert run(secrets_client, secrets)["litellm"] == []


def test_a_role_the_administrator_does_not_administer(secrets_client, secrets, clean_server):
    """Made by another login (say a superuser): 15 lets a CREATEROLE administrator repair it, 16 does not (no ADMIN
    OPTION on it) and the bootstrap says what to do instead of failing on ALTER ROLE."""
    su = clean_server.superuser()
    try:
        su.run("CREATE ROLE litellm NOLOGIN PASSWORD 'stale-password'")
        version = int(su.run("SHOW server_version_num")[0][0])
    finally:
        su.close()
    if version < 160000:
        assert run(secrets_client, secrets)["litellm"][:2] == ["role attributes reset", "password set"]
        return
    with pytest.raises(bootstrap.BootstrapError, match=r"role litellm exists, but this administrator does not administer it .*"
                                        r"GRANT \"litellm\" TO <this administrator> WITH ADMIN OPTION"):
        run(secrets_client, secrets)


def test_refuses_an_over_privileged_role(secrets_client, secrets, clean_server):
    su = clean_server.superuser()
    try:
        su.run("CREATE ROLE langfuse LOGIN SUPERUSER")
    finally:
        su.close()
    with pytest.raises(bootstrap.BootstrapError, match="role langfuse has rolsuper: refusing"):
        run(secrets_client, secrets)


def wait_for_setting(server, name: str, value: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = server.superuser()
        try:
            if connection.run(f"SHOW {name}") == [[value]]:
                return
        finally:
            connection.close()
        time.sleep(0.1)
    raise AssertionError(f"{name} did not become {value}")


def test_no_password_reaches_the_server_log(secrets_client, secrets, clean_server):
    su = clean_server.superuser()
    try:
        su.run("ALTER SYSTEM SET log_statement = 'all'")
        su.run("SELECT pg_reload_conf()")
        wait_for_setting(clean_server, "log_statement", "all")  # the postmaster reloads asynchronously
        run(secrets_client, secrets)
    finally:
        su.run("ALTER SYSTEM RESET log_statement")
        su.run("SELECT pg_reload_conf()")
        su.close()
    log = (clean_server.directory / "server.log").read_text()
    assert 'CREATE ROLE "coder" WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD \'SCRAM-SHA-256$4096:' in log
    for app in APPS:
        assert stored(secrets_client, secrets[1][app])["password"] not in log


def test_administrator_is_refused_without_tls(clean_server):
    with pytest.raises((DatabaseError, InterfaceError), match="no encryption"):
        clean_server.connect(ADMIN, clean_server.admin_password, tls=False)


def cfn_event(request_type, url, master, apps):
    return {
        "RequestType": request_type,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-west-2:222222222222:stack/Staging-Data/1",
        "RequestId": "req-1",
        "LogicalResourceId": "AppDatabases",
        "ResourceProperties": {"MasterSecretArn": master, "AppSecretArns": apps},
    }


def test_cloudformation_create_and_delete(secrets_client, secrets, response_url, clean_server):
    master, apps = secrets
    handler_module.handler(cfn_event("Create", response_url, master, apps), None, client=secrets_client)
    handler_module.handler(
        {**cfn_event("Delete", response_url, master, apps), "PhysicalResourceId": "kept"}, None, client=secrets_client
    )
    create, delete = ResponseRecorder.received
    assert create["Status"] == "SUCCESS" and create["NoEcho"] is True and create["Data"] == {}
    assert delete["Status"] == "SUCCESS" and delete["PhysicalResourceId"] == "kept"
    su = clean_server.superuser()
    try:  # Delete keeps every database and login
        assert su.run("SELECT count(*) FROM pg_database WHERE datname IN ('coder', 'litellm', 'langfuse')") == [[3]]
    finally:
        su.close()


def test_cloudformation_failure_is_reported_without_the_password(secrets_client, secrets, response_url):
    master, apps = secrets
    wrong = stored(secrets_client, master)
    secrets_client.put_secret_value(SecretId=master, SecretString=json.dumps({**wrong, "password": "WrongPassword1"}))
    handler_module.handler(cfn_event("Update", response_url, master, apps), None, client=secrets_client)
    (response,) = ResponseRecorder.received
    assert response["Status"] == "FAILED"
    assert "password authentication failed" in response["Reason"]
    assert "WrongPassword1" not in json.dumps(response)


def test_direct_invocation_reads_its_environment(secrets_client, secrets, monkeypatch):
    master, apps = secrets
    monkeypatch.setenv("MASTER_SECRET_ARN", master)
    monkeypatch.setenv("APP_SECRET_ARNS", json.dumps(apps))
    result = handler_module.handler({}, None, client=secrets_client)
    assert set(result["apps"]) == set(APPS)
    assert "database created" in result["apps"]["coder"]
    assert handler_module.handler({}, None, client=secrets_client) == {"apps": {app: [] for app in APPS}}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"host": "h", "port": 5432, "dbname": "coder", "username": "coder"}, "missing field(s) password"),
        ({"host": "h", "port": 5432, "dbname": "Coder;drop", "username": "coder", "password": "p"}, "not a lower-case"),
        ({"host": "h", "port": "five", "dbname": "coder", "username": "coder", "password": "p"}, "port 'five' is not"),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)
def test_bad_secret_documents_are_named(document, message):
    with pytest.raises(bootstrap.BootstrapError, match=re.escape(message)):
        bootstrap.Login.from_document(document, "secret of coder")


def test_url_encodes_every_part():
    login = bootstrap.Login("db.example", 5432, "coder", "coder", "p@ss/w:rd?&")
    assert login.url() == "postgresql://coder:p%40ss%2Fw%3Ard%3F%26@db.example:5432/coder?sslmode=require"


def test_scram_verifier_matches_the_rfc_7677_example():
    # RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
    verifier = bootstrap.scram_verifier("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    iterations_salt, keys = verifier.removeprefix("SCRAM-SHA-256$").split("$")
    assert iterations_salt == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    stored_key, server_key = keys.split(":")
    # ServerSignature in the RFC's exchange = HMAC(ServerKey, AuthMessage); checked through the server key it yields.
    auth_message = (
        "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    signature = hmac.new(base64.b64decode(server_key), auth_message.encode(), hashlib.sha256).digest()
    assert base64.b64encode(signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert len(base64.b64decode(stored_key)) == 32
