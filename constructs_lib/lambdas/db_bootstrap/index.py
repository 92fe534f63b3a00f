"""Database bootstrap: the CloudFormation custom resource (and a direct invocation) that reconciles app logins.

For each app secret (`<prefix>/<app>/database`: host, port, dbname, username, password) it creates or repairs the
app's role and database on the RDS instance (bootstrap.py), then writes the secret's `url` field, the connection
URL the app reads through ECS secrets. Credentials come from Secrets Manager only and never leave it: the response
to CloudFormation is NoEcho with no data, and logs name apps and changes, never values.

Invocation:
- CloudFormation Create / Update: reconcile every app; Delete: nothing (databases and logins outlive the stack).
- Direct (`aws lambda invoke`, any event without RequestType): the same reconciliation from the function's
  environment, e.g. after an operator changed a password in a secret. Returns {"apps": {app: [changes]}}.

Resource properties / environment:
  MasterSecretArn / MASTER_SECRET_ARN: the RDS master login ({username, password})
  AppSecretArns / APP_SECRET_ARNS: {app: secret ARN} (JSON in the environment)
"""

from __future__ import annotations

import json
import logging
import os

import boto3
from bootstrap import BootstrapError, Login, reconcile_app, tls_context
from cfn_response import send_response
from pg8000.native import Connection

LOG = logging.getLogger()
LOG.setLevel(logging.INFO)
CONNECT_TIMEOUT_SECONDS = 15


def _read_json(client, secret_id: str) -> dict:
    document = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])
    if not isinstance(document, dict):
        raise BootstrapError(f"secret {secret_id}: expected a JSON object")
    return document


def _connector(host: str, port: int, user: str, password: str):
    def connect(database: str) -> Connection:
        return Connection(
            user,
            host=host,
            port=port,
            password=password,
            database=database,
            ssl_context=tls_context(),
            timeout=CONNECT_TIMEOUT_SECONDS,
            application_name="db-bootstrap",
        )

    return connect


def _connect_as(login: Login) -> Connection:
    return _connector(login.host, login.port, login.username, login.password)(login.dbname)


def reconcile_all(client, master_secret_arn: str, app_secret_arns: dict[str, str]) -> dict[str, list[str]]:
    master = _read_json(client, master_secret_arn)
    if not master.get("username") or not master.get("password"):
        raise BootstrapError(f"secret {master_secret_arn}: missing username or password")
    results: dict[str, list[str]] = {}
    for app, secret_arn in sorted(app_secret_arns.items()):
        document = _read_json(client, secret_arn)
        login = Login.from_document(document, f"secret of {app}")
        connect = _connector(login.host, login.port, master["username"], master["password"])
        changes = reconcile_app(connect, login, _connect_as)
        url = login.url()
        if document.get("url") != url:
            client.put_secret_value(SecretId=secret_arn, SecretString=json.dumps({**document, "url": url}))
            changes.append("secret url written")
        LOG.info("%s: %s", app, ", ".join(changes) or "already up to date")
        results[app] = changes
    return results


def _redacted(text: str, client, secret_ids: list[str]) -> str:
    """Failure reasons go to CloudFormation events: make sure no password can travel with them."""
    for secret_id in secret_ids:
        try:
            password = _read_json(client, secret_id).get("password")
        except Exception:  # noqa: S112 - an unreadable secret cannot leak into the text either
            continue
        if password:
            text = text.replace(str(password), "***")
    return text


def handler(event: dict, context, client=None):
    client = client or boto3.client("secretsmanager")
    if "RequestType" not in event:  # direct invocation by an operator
        apps = json.loads(os.environ["APP_SECRET_ARNS"])
        return {"apps": reconcile_all(client, os.environ["MASTER_SECRET_ARN"], apps)}

    props = event["ResourceProperties"]
    status, reason = "SUCCESS", ""
    try:
        if event["RequestType"] in ("Create", "Update"):
            reconcile_all(client, props["MasterSecretArn"], props["AppSecretArns"])
    except Exception as error:  # report every failure to CloudFormation instead of letting it hang
        LOG.error("failed: %s", type(error).__name__)
        secret_ids = [props.get("MasterSecretArn", ""), *props.get("AppSecretArns", {}).values()]
        status, reason = "FAILED", _redacted(f"{type(error).__name__}: {error}", client, secret_ids)[:500]
    physical_id = event.get("PhysicalResourceId") or f"{props.get('MasterSecretArn', 'db')}:app-databases"
    send_response(event, context, status, physical_id, reason)
