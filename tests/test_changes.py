"""`python -m pipeline.changes`: what a release changes and whether it destroys data, against another assembly or
against what is deployed (a real moto server over HTTP)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from pipeline import changes
from tests.assembly import ROOT
from tests.test_config import BASE
from tests.tls_servers import SHUTDOWN_POLL

ALLOW_DATABASE = ('\n[[environments.allowed_changes]]\nstack = "Data"\nlogical_id = "Postgres9DC8BB04"\n'
                  'reason = "moving to a new instance restored from the final snapshot (change 4711)"\n')


def run(*args: str, env: dict | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """The review as the pipeline runs it: `python -m pipeline.changes` in a process of its own when `process` or an
    environment is given; otherwise its main() in this process (the same code, without paying the interpreter's
    start and cfn-lint's import on every call)."""
    if process or env is not None:
        return subprocess.run([sys.executable, "-m", "pipeline.changes", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=env)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = changes.main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return subprocess.CompletedProcess(["pipeline.changes", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def edit(assembly, tmp_path):
    """A copy of the session's assembly (templates and manifests) whose templates a test edits."""
    copy = tmp_path / "new.out"
    shutil.copytree(assembly.directory, copy, ignore=shutil.ignore_patterns("asset.*"))

    def change(stack: str, mutate) -> Path:
        template_file = copy / assembly.templates[stack].path.relative_to(assembly.directory)
        template = json.loads(template_file.read_text())
        mutate(template["Resources"])
        template_file.write_text(json.dumps(template))
        return copy

    return change


def report(tmp_path: Path, *args: str, process: bool = False) -> tuple[subprocess.CompletedProcess, dict, str]:
    result = run(*args, "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"),
                 "--junit", str(tmp_path / "r.xml"), process=process)
    data = json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else {}
    return result, data, (tmp_path / "r.md").read_text() if (tmp_path / "r.md").exists() else ""


def changed(data: dict, logical_id: str) -> dict:
    (found,) = [c for c in data["changes"] if c["logical_id"] == logical_id]
    return found


def test_no_change_is_an_empty_review(assembly, tmp_path):
    result, data, markdown = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(assembly.directory),
                                    process=True)
    assert result.returncode == 0, result.stderr
    assert data["summary"] == {"added": 0, "removed": 0, "changed": 0, "replaced": 0, "blocking": 0}
    assert "blocking: none" in result.stdout


def test_a_harmless_change_passes_and_names_the_service_and_property(assembly, edit, tmp_path):
    def more_litellm(resources):
        resources["LiteLLMService775F31C1"]["Properties"]["DesiredCount"] = 3

    new = edit("Production-Platform", more_litellm)
    result, data, markdown = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(new), "--stage", "Production")
    assert result.returncode == 0, result.stdout + result.stderr
    change = changed(data, "LiteLLMService775F31C1")
    assert (change["action"], change["properties"], change["replacement"]) == ("modify", ["DesiredCount"], "no")
    assert data["summary"]["changed"] == 1 and data["summary"]["blocking"] == 0
    assert "| Production-Platform | `LiteLLMService775F31C1` | AWS::ECS::Service | DesiredCount: in place |" in markdown


def test_a_config_variant_is_reviewed_per_environment(assembly, variant, tmp_path):
    """The session's config variant (a pinned OIDC secret version, a backup copy, the old ClickHouse data's removal and
    a database restored from a snapshot in staging) changes staging in place but for the database, which a snapshot
    identifier set on a running instance replaces (blocking: only the first deploy of a taken-over environment may
    restore), and leaves production alone."""
    result, data, _ = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(variant.assembly.directory),
                             "--stage", "staging")
    assert result.returncode == 1, result.stdout + result.stderr
    assert [(c["logical_id"], c["replacement"]) for c in data["changes"] if c["blocking"]] == [("Postgres9DC8BB04", "yes")]
    names = {c["logical_id"]: c for c in data["changes"]}
    rule = [c for lid, c in names.items() if lid.startswith("KeyProvisionerServiceRule200")]
    assert rule and rule[0]["properties"] == ["Actions"] and rule[0]["replacement"] == "no"
    assert any(lid.startswith("BackupPlan") and c["properties"] == ["BackupPlan"] for lid, c in names.items())
    quiet, data, _ = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(variant.assembly.directory),
                            "--stage", "Production")
    # Production only gets what the variant plants and the pipeline's e-mail on its alarm topic.
    assert sorted({c["logical_id"].split("platformoncall")[0].split("Bucket")[0] for c in data["changes"]}) == [
        "AlarmsTopic", "Planted"]


def test_replacing_the_database_blocks_and_names_it(assembly, edit, tmp_path):
    def rename_instance(resources):
        resources["Postgres9DC8BB04"]["Properties"]["DBInstanceIdentifier"] = "coder-production-postgres-2"

    new = edit("Production-Data", rename_instance)
    result, data, markdown = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(new), "--stage", "production")
    assert result.returncode == 1
    change = changed(data, "Postgres9DC8BB04")
    assert (change["replacement"], change["blocking"], change["properties"]) == ("yes", True, ["DBInstanceIdentifier"])
    assert "BLOCKING: Production-Data/Postgres9DC8BB04 (AWS::RDS::DBInstance) DBInstanceIdentifier: **replaced**" in result.stdout
    assert markdown.index("## Data at risk") < markdown.index("## Every other change") if "## Every other change" in markdown else True
    assert 'failures="1"' in (tmp_path / "r.xml").read_text()


def test_an_intended_replacement_allowed_in_config_passes_and_shows_allowed(assembly, edit, tmp_path):
    def rename_instance(resources):
        resources["Postgres9DC8BB04"]["Properties"]["DBInstanceIdentifier"] = "coder-production-postgres-2"

    config = tmp_path / "allowed.toml"
    config.write_text(BASE + ALLOW_DATABASE)
    new = edit("Production-Data", rename_instance)
    result, data, markdown = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(new),
                                    "--stage", "Production", "--config", str(config))
    assert result.returncode == 0, result.stdout
    assert changed(data, "Postgres9DC8BB04")["allowed"].startswith("moving to a new instance")
    assert "allowed: moving to a new instance" in markdown


def test_an_allowance_that_matches_nothing_is_reported(assembly, tmp_path):
    config = tmp_path / "allowed.toml"
    config.write_text(BASE + ALLOW_DATABASE)
    result, data, markdown = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(assembly.directory),
                                    "--config", str(config))
    assert result.returncode == 0
    assert data["unused_allowances"] == [
        "production: Data/Postgres9DC8BB04 matches no destructive change: remove the allowance"]
    assert "## Allowances that match nothing" in markdown


def test_a_renamed_stateful_construct_blocks(assembly, edit, tmp_path):
    def rename_bucket(resources):
        resources["TerraformStateBucketRenamed"] = resources.pop("TerraformStateBucket68BE559E")

    new = edit("Staging-Data", rename_bucket)
    result, data, _ = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(new), "--stage", "Staging")
    assert result.returncode == 1
    removed = changed(data, "TerraformStateBucket68BE559E")
    assert (removed["action"], removed["blocking"]) == ("remove", True)
    assert changed(data, "TerraformStateBucketRenamed")["action"] == "add"


def test_iam_statements_and_ingress_rules_are_rows_of_their_own(assembly, edit, tmp_path):
    def open_up(resources):
        policy = resources["CoderTaskRoleDefaultPolicyC9F64219"]["Properties"]["PolicyDocument"]
        policy["Statement"].append({"Action": "iam:*", "Effect": "Allow", "Resource": "*"})
        resources["AlbOpen"] = {"Type": "AWS::EC2::SecurityGroupIngress", "Properties": {
            "GroupId": "sg-0123", "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "0.0.0.0/0"}}

    new = edit("Staging-Platform", open_up)
    result, data, markdown = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(new), "--stage", "Staging")
    assert result.returncode == 0  # reviewable, not destructive
    rows = {(r["kind"], r["sign"], r["logical_id"]): r["text"] for r in data["rows"]}
    assert rows[("iam", "+", "CoderTaskRoleDefaultPolicyC9F64219")] == '{"Action":"iam:*","Effect":"Allow","Resource":"*"}'
    assert '"CidrIp":"0.0.0.0/0"' in rows[("network", "+", "AlbOpen")] and '"FromPort":22' in rows[("network", "+", "AlbOpen")]
    assert markdown.index("## IAM statements") < markdown.index("## Security-group rules") < markdown.index("## Every other change")


def test_a_file_system_policy_statement_is_a_row_of_its_own(assembly, edit, tmp_path):
    """Who may mount a file system is said in its policy: a grant added there is reviewed like a role's."""
    grant = {"Action": "elasticfilesystem:ClientRootAccess", "Effect": "Allow", "Principal": {"AWS": "*"}}

    def open_up(resources):
        resources["FileSystem8A8E25C0"]["Properties"]["FileSystemPolicy"]["Statement"].append(grant)

    new = edit("Staging-Data", open_up)
    result, data, _ = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(new), "--stage", "Staging")
    assert result.returncode == 0, result.stdout
    rows = {(r["kind"], r["sign"], r["logical_id"]): r["text"] for r in data["rows"]}
    assert json.loads(rows[("iam", "+", "FileSystem8A8E25C0")]) == grant


def test_a_replacement_cascades_through_references(assembly, edit, tmp_path):
    """A renamed database subnet group is replaced (DBSubnetGroupName is create-only); the database names it in its
    own create-only DBSubnetGroupName, by reference: it may be replaced too, and that blocks."""
    def rename_subnet_group(resources):
        resources["PostgresSubnetGroup9F8A4D6E"]["Properties"]["DBSubnetGroupName"] = "coder-production-data-subnets"

    new = edit("Production-Data", rename_subnet_group)
    result, data, _ = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(new), "--stage", "Production")
    assert result.returncode == 1
    group = changed(data, "PostgresSubnetGroup9F8A4D6E")
    assert (group["replacement"], group["blocking"]) == ("yes", False)  # not stateful itself
    database = changed(data, "Postgres9DC8BB04")
    assert (database["replacement"], database["blocking"]) == ("maybe", True)
    assert database["properties"] == ["DBSubnetGroupName (refers to a replaced resource)"]


def test_a_replacement_is_followed_into_the_stacks_that_read_it(assembly, edit, tmp_path):
    """A data subnet moved to another range is replaced (CidrBlock is create-only); the Data stack reads its id
    through the Network stack's output: the database's and the cache's subnet groups get new SubnetIds."""
    def move_subnet(resources):
        resources["VpcPrivateDataSubnet1Subnet588C411B"]["Properties"]["CidrBlock"] = "10.0.30.0/24"

    new = edit("Production-Network", move_subnet)
    result, data, markdown = report(tmp_path, "--base", str(assembly.directory), "--assembly", str(new),
                                    "--stage", "Production")
    assert changed(data, "VpcPrivateDataSubnet1Subnet588C411B")["replacement"] == "yes"
    output = "Production-Network/PublishOutputRefVpcPrivateDataSubnet1Subnet588C411BC2D88472"
    for group in ("PostgresSubnetGroup9F8A4D6E", "RedisSubnetGroup"):
        found = changed(data, group)
        assert found["stack"] == "Production-Data" and found["action"] == "modify"
        assert f"SubnetIds (reads {output}, a replaced resource's)" in found["properties"]
    assert "PostgresSubnetGroup9F8A4D6E" in markdown


def test_a_stateful_resource_reached_across_stacks_blocks(assembly, edit, tmp_path):
    """Read through a create-only property, the new value from another stack may replace a stateful resource: that
    blocks, as a direct replacement does."""
    output = "PublishOutputRefVpcPrivateDataSubnet1Subnet588C411BC2D88472"

    def move_subnet(resources):
        resources["VpcPrivateDataSubnet1Subnet588C411B"]["Properties"]["CidrBlock"] = "10.0.30.0/24"

    def name_the_bucket_after_the_subnet(resources):
        resources["BackupsBucket0F0F569B"]["Properties"]["BucketName"] = {"Fn::GetStackOutput": {
            "StackName": "Production-Network", "Region": "us-west-2", "OutputName": output}}

    edit("Production-Data", name_the_bucket_after_the_subnet)
    base = tmp_path / "base.out"
    shutil.copytree(tmp_path / "new.out", base)  # the bucket already read the subnet before this release
    new = edit("Production-Network", move_subnet)
    result, data, _ = report(tmp_path, "--base", str(base), "--assembly", str(new), "--stage", "Production")
    assert result.returncode == 1, result.stdout
    bucket = changed(data, "BackupsBucket0F0F569B")
    assert (bucket["replacement"], bucket["blocking"]) == ("maybe", True)
    assert bucket["properties"] == [f"BucketName (reads Production-Network/{output}, a replaced resource's)"]


@pytest.mark.parametrize(("args", "message"), [
    (("--base", "nowhere", "--assembly", "nowhere"), "nowhere/manifest.json: not found"),
    (("--base", "{assembly}", "--assembly", "{assembly}", "--stage", "Prod"), "stage 'Prod' is not in the assembly"),
    (("--base", "{assembly}", "--assembly", "{assembly}", "--config", "missing.toml"), "missing.toml"),
])
def test_bad_input_exits_2_with_one_line(assembly, args, message):
    result = run(*(a.replace("{assembly}", str(assembly.directory)) for a in args))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- against what is deployed -----------------------------------------------------------------------------------


def aws_env(endpoint: str, **extra: str) -> dict:
    return {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-west-2", **extra}


def test_deployed_mode_reads_each_stack_through_its_lookup_role(assembly, moto_endpoint, tmp_path):
    import boto3

    # The stack lives in staging's account: moto scopes an assumed role's session to the role's account.
    role = "arn:aws:iam::222222222222:role/cdk-hnb659fds-lookup-role-222222222222-us-west-2"
    sts = boto3.client("sts", endpoint_url=moto_endpoint, region_name="us-west-2",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    credentials = sts.assume_role(RoleArn=role, RoleSessionName="setup")["Credentials"]
    cloudformation = boto3.client("cloudformation", endpoint_url=moto_endpoint, region_name="us-west-2",
                                  aws_access_key_id=credentials["AccessKeyId"],
                                  aws_secret_access_key=credentials["SecretAccessKey"],
                                  aws_session_token=credentials["SessionToken"])
    older = {"Resources": {"RetiredTopic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": "retired"}}}}
    cloudformation.create_stack(StackName="Staging-Observability", TemplateBody=json.dumps(older))
    result = run("--base", "deployed", "--assembly", str(assembly.directory), "--stage", "staging",
                 "--json", str(tmp_path / "r.json"), env=aws_env(moto_endpoint))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    removed = [c for c in data["changes"] if c["action"] == "remove"]
    assert [(c["stack"], c["logical_id"]) for c in removed] == [("Staging-Observability", "RetiredTopic")]
    new_in_network = [c for c in data["changes"] if c["stack"] == "Staging-Network"]
    assert new_in_network and all(c["action"] == "add" for c in new_in_network)  # not deployed yet: all additions
    assert data["summary"]["added"] == sum(len(assembly.stack("Staging", layer).resources) - 1
                                           for layer in ("Network", "Data", "Platform", "Observability"))


class Refusing(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = (b'<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not authorized to '
                b"perform: sts:AssumeRole</Message></Error></ErrorResponse>")
        self.send_response(403)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_deployed_mode_denied_or_without_credentials_exits_2(assembly):
    server = HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL}, daemon=True).start()
    try:
        denied = run("--base", "deployed", "--assembly", str(assembly.directory), "--stage", "Production",
                     env=aws_env(f"http://127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
    assert denied.returncode == 2
    assert "AccessDenied" in denied.stderr and "cdk-hnb659fds-lookup-role-333333333333-us-west-2" in denied.stderr
    assert "Traceback" not in denied.stderr
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    bare.update({"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                 "AWS_EC2_METADATA_DISABLED": "true"})
    nothing = run("--base", "deployed", "--assembly", str(assembly.directory), "--stage", "Production", env=bare)
    assert nothing.returncode == 2 and "no AWS credentials" in nothing.stderr and "Traceback" not in nothing.stderr


def test_the_review_runs_on_a_bare_interpreter_after_make_synth_alone(assembly, edit):
    """No cfn-lint, no boto3 (an assembly as the base): what replaces a resource comes from the committed
    pipeline/create-only.json, so the Review step installs boto3 only and a person runs it after `make synth`."""
    new = edit("Production-Data", lambda r: r["Postgres9DC8BB04"]["Properties"].update(DBInstanceIdentifier="renamed"))
    bare = Path(sys.base_prefix) / "bin" / "python3"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.modules['cfnlint'] = None; sys.modules['boto3'] = None; "
            "from pipeline import changes; sys.exit(changes.main(sys.argv[1:]))")
    result = subprocess.run([str(bare), "-I", "-c", code, "--base", str(assembly.directory), "--assembly", str(new),
                             "--stage", "production"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BLOCKING: Production-Data/Postgres9DC8BB04 (AWS::RDS::DBInstance) DBInstanceIdentifier: **replaced**" in result.stdout


def test_the_committed_create_only_table_is_what_the_schemas_say_for_the_assembly(assembly, tmp_path, monkeypatch):
    from pipeline import resource_schemas

    assert resource_schemas.main(["--assembly", str(assembly.directory), "--check"]) == 0
    table = json.loads(resource_schemas.TABLE.read_text())["types"]
    assert table["AWS::RDS::DBInstance"] and "DBInstanceIdentifier" in table["AWS::RDS::DBInstance"]
    stale = tmp_path / "create-only.json"
    stale.write_text(json.dumps({"types": {k: v for k, v in table.items() if k != "AWS::EFS::FileSystem"}}))
    monkeypatch.setattr(resource_schemas, "TABLE", stale)
    resource_schemas._committed.cache_clear()
    try:
        assert resource_schemas.main(["--assembly", str(assembly.directory), "--check"]) == 1
        with pytest.raises(resource_schemas.UnknownType, match="AWS::EFS::FileSystem is not in create-only.json"):
            resource_schemas.create_only("AWS::EFS::FileSystem")
        assert resource_schemas.create_only("Custom::SecretFields") == frozenset()
    finally:
        resource_schemas._committed.cache_clear()
