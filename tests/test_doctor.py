"""`make bootstrap` and `make doctor`: the one-time set-up printed and checked, against a moto server over HTTP
(AWS_ENDPOINT_URL), with botocore's Stubber for what moto lacks (CodeConnections, CodePipeline executions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest
from botocore.stub import Stubber

from pipeline import bootstrap, doctor
from tests.assembly import ROOT
from tests.test_config import BASE

PIPELINE, STAGING, PRODUCTION = "480516523312", "590627634423", "601738745534"
CONNECTION = f"arn:aws:codeconnections:us-west-2:{PIPELINE}:connection/7d1e0a40-5b2c-4f1e-9a3d-6c8b2e4f1a90"
REAL = (BASE.replace("111111111111", PIPELINE).replace("222222222222", STAGING).replace("333333333333", PRODUCTION)
        .replace("00000000-0000-0000-0000-000000000000", "7f3c2a10-5d4e-4b8a-9c61-2e8f0b1d4a77")
        .replace(f"arn:aws:codeconnections:us-west-2:{PIPELINE}:connection/00000000-0000-4000-8000-000000000000", CONNECTION)
        .replace("company.com", "acme-corp.io").replace("example-org/", "acme/")
        .replace("llm-gateway.example.com", "llm-gateway.acme-corp.io")
        .replace('notification_email = ""', 'notification_email = "oncall@acme-corp.io"'))
OLD_TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                      "Principal": {"AWS": "arn:aws:iam::999999999999:root"}}]}


@pytest.fixture
def aws(moto_endpoint, monkeypatch, tmp_path):
    """A fresh moto world: credentials per account (moto scopes an assumed role's session to the role's account)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    base = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-west-2")

    def account(number: str) -> boto3.session.Session:
        credentials = base.client("sts").assume_role(RoleArn=f"arn:aws:iam::{number}:role/admin",
                                                     RoleSessionName="setup")["Credentials"]
        return boto3.session.Session(aws_access_key_id=credentials["AccessKeyId"],
                                     aws_secret_access_key=credentials["SecretAccessKey"],
                                     aws_session_token=credentials["SessionToken"], region_name="us-west-2")

    config = tmp_path / "real.toml"
    config.write_text(REAL)
    return account, config


def stubbed(session_maker, connection_status="AVAILABLE", execution_status=None):
    """Sessions whose CodeConnections and CodePipeline clients answer from Stubber."""

    class Session(boto3.session.Session):
        def client(self, service, *args, **kwargs):
            client = super().client(service, *args, **kwargs)
            if service == "codeconnections":
                stub = Stubber(client)
                stub.add_response("get_connection", {"Connection": {"ConnectionStatus": connection_status,
                                                                    "ConnectionArn": CONNECTION}})
                stub.activate()
            if service == "codepipeline" and execution_status:
                stub = Stubber(client)
                stub.add_response("list_pipeline_executions", {"pipelineExecutionSummaries": [
                    {"pipelineExecutionId": "0b7e6f3c-1d2a-4c5b-9e8f-7a6b5c4d3e2f", "status": execution_status}]})
                stub.activate()
            return client

    def factory(**kwargs):
        if not kwargs:  # the doctor's own credentials: the pipeline account's
            credentials = session_maker().get_credentials()
            kwargs = {"aws_access_key_id": credentials.access_key, "aws_secret_access_key": credentials.secret_key,
                      "aws_session_token": credentials.token, "region_name": "us-west-2"}
        return Session(**kwargs)

    return factory


def push_key_provisioner(session) -> None:
    """The Key Provisioner's image in the account's ECR (built and pushed from its own repository)."""
    ecr = session.client("ecr")
    ecr.create_repository(repositoryName="key-provisioner")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                           "digest": "sha256:" + "0" * 64}, "layers": []}
    ecr.put_image(repositoryName="key-provisioner", imageManifest=json.dumps(manifest), imageTag="1.0.0")


def bootstrap_account(session, trusted: str | None, version: str = "21", qualifier: str = "hnb659fds",
                      execution: str = "least-privilege", image: bool = True, region: str = "us-west-2") -> None:
    """What `cdk bootstrap` leaves in `region`: the CDKToolkit stack (its execution-policies parameter), the version
    parameter and (with trust) the roles; and the execution policies `make bootstrap --apply` puts ("least-privilege"),
    or none and AdministratorAccess ("administrator", an older bootstrap)."""
    account = session.client("sts").get_caller_identity()["Account"]
    kinds = ("pipeline",) if trusted is None else ("platform",)
    names = [name for kind in kinds for name in __import__("pipeline.execution_policy").execution_policy.policy_names(
        "coder", kind)]
    iam = session.client("iam")
    if execution == "least-privilege":
        for name in names:
            try:
                iam.create_policy(PolicyName=name, PolicyDocument=bootstrap.policy_document(name))
            except iam.exceptions.EntityAlreadyExistsException:  # IAM is global: created with another region's
                pass
        attached = ",".join(f"arn:aws:iam::{account}:policy/{name}" for name in names)
    else:
        attached = bootstrap.ADMINISTRATOR_ACCESS
    session.client("cloudformation", region_name=region).create_stack(StackName="CDKToolkit", TemplateBody=json.dumps(
        # CDK's template declares a CommaDelimitedList, which CloudFormation shows comma-joined; moto would show the
        # Python list's repr, so the stand-in is a String with the same text.
        {"Parameters": {"CloudFormationExecutionPolicies": {"Type": "String", "Default": ""}},
         "Resources": {"Bucket": {"Type": "AWS::S3::Bucket"}}}),
        Parameters=[{"ParameterKey": "CloudFormationExecutionPolicies", "ParameterValue": attached}])
    session.client("ssm", region_name=region).put_parameter(Name=f"/cdk-bootstrap/{qualifier}/version", Value=version,
                                                            Type="String")
    if trusted is not None and image:
        push_key_provisioner(session)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {
        "AWS": f"arn:aws:iam::{trusted or account}:root"}}]}
    for kind in ("lookup", "deploy", "file-publishing"):
        session.client("iam").create_role(RoleName=f"cdk-{qualifier}-{kind}-role-{account}-{region}",
                                          AssumeRolePolicyDocument=json.dumps(trust))


def run_doctor(capsys, config, factory) -> tuple[int, str]:
    code = doctor.main(["--config", str(config)], session_factory=factory)
    return code, capsys.readouterr().out


def test_an_empty_account_fails_and_names_the_bootstrap_commands(aws, capsys):
    account, config = aws
    code, out = run_doctor(capsys, config, stubbed(lambda: account(PIPELINE), connection_status="PENDING"))
    assert code == 1
    assert f"PASS credentials: account {PIPELINE}, the pipeline account" in out
    assert "FAIL pipeline account bootstrapped: no CDKToolkit stack in us-west-2" in out
    assert f"fix: npx cdk bootstrap aws://{PIPELINE}/us-west-2 --qualifier hnb659fds" in out
    assert f"FAIL staging ({STAGING}/us-west-2) deploy role: cdk-hnb659fds-deploy-role-{STAGING}-us-west-2 not found" in out
    assert f"--trust {PIPELINE} --trust-for-lookup {PIPELINE}" in out
    assert "FAIL source connection: PENDING" in out and "Update pending connection" in out
    assert "WARN after the first deploy: CoderPipeline is not deployed yet" in out


def test_a_fully_bootstrapped_set_up_passes(aws, capsys):
    account, config = aws
    bootstrap_account(account(PIPELINE), None)
    for number in (STAGING, PRODUCTION):
        bootstrap_account(account(number), PIPELINE)
    code, out = run_doctor(capsys, config, stubbed(lambda: account(PIPELINE)))
    assert code == 0, out
    assert "FAIL" not in out
    for where in (f"staging ({STAGING}/us-west-2)", f"production ({PRODUCTION}/us-west-2)"):
        for kind in ("lookup", "deploy", "file-publishing"):
            assert f"PASS {where} {kind} role: trusts the pipeline account {PIPELINE}" in out
        assert f"PASS {where} bootstrap version: 21 (>= 6)" in out
        assert f"PASS {where} execution policies: 3 derived policies, current" in out
    assert "PASS pipeline account execution policies: 1 derived policies, current" in out
    assert "PASS source connection: AVAILABLE" in out and "PASS example values: none left in the config" in out


def test_a_missing_key_provisioner_image_fails_with_how_to_push_it(aws, capsys):
    account, config = aws
    bootstrap_account(account(PIPELINE), None)
    bootstrap_account(account(STAGING), PIPELINE)
    bootstrap_account(account(PRODUCTION), PIPELINE, image=False)
    code, out = run_doctor(capsys, config, stubbed(lambda: account(PIPELINE)))
    assert code == 1
    image = f"{PRODUCTION}.dkr.ecr.us-west-2.amazonaws.com/key-provisioner:1.0.0"
    assert f"PASS staging image key_provisioner: {STAGING}.dkr.ecr.us-west-2.amazonaws.com/key-provisioner:1.0.0 is in ECR" in out
    assert f"FAIL production image key_provisioner: {image} not found" in out
    assert f"fix: build the image and push it: docker push {image}" in out


def test_administrator_access_and_out_of_date_execution_policies_are_warned_with_the_fix(aws, capsys):
    account, config = aws
    bootstrap_account(account(PIPELINE), None, execution="administrator")
    bootstrap_account(account(STAGING), PIPELINE)
    bootstrap_account(account(PRODUCTION), PIPELINE)
    # A release added a resource type since production's policies were put: its committed document grew.
    stale = f"arn:aws:iam::{PRODUCTION}:policy/coder-cdk-execution-platform-2"
    older = json.loads(bootstrap.policy_document("coder-cdk-execution-platform-2"))
    older["Statement"][0]["Action"] = older["Statement"][0]["Action"][1:]
    iam = account(PRODUCTION).client("iam")
    iam.create_policy_version(PolicyArn=stale, PolicyDocument=json.dumps(older), SetAsDefault=True)
    code, out = run_doctor(capsys, config, stubbed(lambda: account(PIPELINE)))
    assert code == 0, out  # warnings: the set-up works, but wider or older than it should be
    assert ("WARN pipeline account execution policies: CloudFormation's execution role has AdministratorAccess: a deploy "
            "may do anything in this account") in out
    assert f"--cloudformation-execution-policies arn:aws:iam::{PIPELINE}:policy/coder-cdk-execution-pipeline-1" in out
    assert (f"WARN production ({PRODUCTION}/us-west-2) execution policies: out of date with pipeline/execution-policies/: "
            "coder-cdk-execution-platform-2") in out
    assert f"PASS staging ({STAGING}/us-west-2) execution policies" in out


def test_a_role_without_trust_and_an_old_version_fail(aws, capsys):
    account, config = aws
    bootstrap_account(account(PIPELINE), None)
    bootstrap_account(account(STAGING), "999999999999")  # bootstrapped without --trust of the pipeline account
    bootstrap_account(account(PRODUCTION), PIPELINE, version="5")
    code, out = run_doctor(capsys, config, stubbed(lambda: account(PIPELINE)))
    assert code == 1
    assert f"FAIL staging ({STAGING}/us-west-2) deploy role: does not trust the pipeline account {PIPELINE}" in out
    assert f"FAIL production ({PRODUCTION}/us-west-2) bootstrap version: 5, older than the 6 required" in out


def test_after_the_first_deploy_secrets_subscription_and_runs_are_checked(aws, capsys):
    account, config = aws
    pipeline = account(PIPELINE)
    bootstrap_account(pipeline, None)
    for number in (STAGING, PRODUCTION):
        bootstrap_account(account(number), PIPELINE)
    pipeline.client("cloudformation").create_stack(StackName="CoderPipeline", TemplateBody=json.dumps(
        {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}))
    topic = pipeline.client("sns").create_topic(Name="coder-pipeline-notifications")["TopicArn"]
    pipeline.client("sns").subscribe(TopicArn=topic, Protocol="email", Endpoint="oncall@acme-corp.io")
    for number, prefix in ((STAGING, "staging"), (PRODUCTION, "prod")):
        secrets = account(number).client("secretsmanager")
        for short in doctor.OPERATOR_SECRETS:
            secrets.create_secret(Name=f"{prefix}/{short}", SecretString="placeholder-from-the-deploy")
        secrets.put_secret_value(SecretId=f"{prefix}/litellm/anthropic-api-key", SecretString="sk-ant-real")
    code, out = run_doctor(capsys, config, stubbed(lambda: pipeline, execution_status="Failed"))
    assert code == 1
    assert "PASS prod/litellm/anthropic-api-key: set by a person" in out
    assert "FAIL prod/coder/oidc: still the generated placeholder" in out
    assert "fix: aws secretsmanager put-secret-value --secret-id prod/coder/oidc" in out
    assert "notification e-mail: oncall@acme-corp.io" in out
    assert "FAIL last pipeline run: Failed" in out and "get-pipeline-execution --pipeline-name coder-platform" in out


def test_wrong_account_and_example_values_fail(aws, capsys):
    account, _ = aws
    code, out = run_doctor(capsys, ROOT / "config" / "environments.toml", stubbed(lambda: account("123456789012")))
    assert code == 1
    assert "FAIL credentials: account 123456789012, not the pipeline account 111111111111" in out
    assert "FAIL example value: production.account = '333333333333'" in out


def test_no_credentials_exit_2_without_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_EC2_METADATA_DISABLED": "true"})
    result = subprocess.run([sys.executable, "-m", "pipeline.doctor"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no AWS credentials") and "Traceback" not in result.stderr


# --- make bootstrap -----------------------------------------------------------------------------------------------


def test_bootstrap_prints_every_step_in_order_for_the_default_config(capsys):
    assert bootstrap.main([]) == 0
    out = capsys.readouterr().out
    assert "AdministratorAccess" not in out
    pipeline = ("npx cdk bootstrap aws://111111111111/us-west-2 --qualifier hnb659fds --output build/bootstrap.out "
                "--cloudformation-execution-policies arn:aws:iam::111111111111:policy/coder-cdk-execution-pipeline-1")
    platform = ",".join(f"arn:aws:iam::222222222222:policy/coder-cdk-execution-platform-{n}" for n in (1, 2, 3))
    staging = ("npx cdk bootstrap aws://222222222222/us-west-2 --qualifier hnb659fds --output build/bootstrap.out "
               f"--cloudformation-execution-policies {platform} --trust 111111111111 --trust-for-lookup 111111111111")
    production = staging.replace("222222222222", "333333333333")
    create = ("aws iam create-policy --policy-name coder-cdk-execution-platform-1 "
              "--policy-document file://pipeline/execution-policies/platform-1.json")
    connection = "aws codeconnections create-connection --provider-type GitHub --connection-name coder-source"
    assert out.splitlines()[2].startswith("1. Create the source connection")  # the shipped ARN is an example
    steps = [connection, pipeline, create, staging, create, production, "Update pending connection", "make doctor\n",
             "make synth && npx cdk deploy --app cdk.out CoderPipeline"]
    position = 0
    for step in steps:  # each after the one before it
        position = out.index(step, position) + len(step)
    assert "--trust" not in out.splitlines()[out.splitlines().index(next(line for line in out.splitlines()
                                                                          if pipeline in line))]


def test_bootstrap_covers_the_three_environment_example(capsys):
    """dev is in eu-central-1, the pipeline in us-west-2: dev's account is bootstrapped there; the pipeline account
    needs no bootstrap in eu-central-1 (CDK Pipelines' support stack there is deployed with its us-west-2 roles, the
    test on the three-environment assembly reads its manifest)."""
    assert bootstrap.main(["--config", str(ROOT / "config" / "examples" / "three-environments.toml")]) == 0
    out = capsys.readouterr().out
    assert [line.split()[3] for line in out.splitlines() if "npx cdk bootstrap" in line] == [
        "aws://111111111111/us-west-2", "aws://444444444444/eu-central-1", "aws://222222222222/us-west-2",
        "aws://333333333333/us-west-2"]


def test_an_account_in_two_regions_creates_its_policies_once(capsys, tmp_path):
    """staging and production share an account in two regions: IAM is global, so the execution policies are created in
    the first step only; the second bootstrap attaches the same ones."""
    text = REAL.replace(f'account = "{PRODUCTION}"', f'account = "{STAGING}"').replace(f"{PRODUCTION}.dkr", f"{STAGING}.dkr")
    start = text.rindex("\n[[environments]]")
    production = text[start:].replace('region = "us-west-2"', 'region = "eu-west-1"').replace("us-west-2a", "eu-west-1a").replace(
        "us-west-2b", "eu-west-1b").replace("ecr.us-west-2", "ecr.eu-west-1")
    (tmp_path / "shared.toml").write_text(text[:start] + production)
    assert bootstrap.main(["--config", str(tmp_path / "shared.toml")]) == 0
    out = capsys.readouterr().out
    assert out.count("--policy-name coder-cdk-execution-platform-1 ") == 1
    assert "Bootstrap production: trusts the pipeline account to deploy and to look up, with the execution policies " \
           "created above (IAM is global):" in out
    assert f"npx cdk bootstrap aws://{STAGING}/eu-west-1" in out


def test_bootstrap_apply_runs_with_profiles_and_stops_at_the_first_failure(capsys):
    calls = []

    class Result:
        def __init__(self, code):
            self.returncode = code

    def run(command):
        calls.append(command)
        return Result(1 if "aws://222222222222/us-west-2" in command else 0)

    accounts = {"tools": "111111111111", "stg": "222222222222", "prd": "333333333333"}
    code = bootstrap.main(["--apply", "--profile", "pipeline=tools", "--profile", "staging=stg",
                           "--profile", "333333333333=prd"], run=run, iam_client=lambda _profile: FakeIam(),
                          account_of=accounts.get)
    assert code == 1
    assert [c[-1] for c in calls] == ["tools", "stg"]  # production never ran
    assert "bootstrapping staging (222222222222/us-west-2) failed" in capsys.readouterr().err


def test_bootstrap_apply_refuses_a_missing_profile_before_running_anything(capsys):
    calls = []
    assert bootstrap.main(["--apply", "--profile", "pipeline=tools"], run=calls.append) == 2
    assert calls == [] and "no --profile for staging" in capsys.readouterr().err


class FakeIam:
    """IAM's customer managed policies of one account, as the bootstrap uses them (create, read, version)."""

    class exceptions:  # noqa: N801 - botocore's naming
        class NoSuchEntityException(Exception):
            pass

    def __init__(self) -> None:
        self.policies: dict[str, list[dict]] = {}

    def get_policy(self, PolicyArn):  # noqa: N803 - botocore's naming
        if PolicyArn not in self.policies:
            raise self.exceptions.NoSuchEntityException(PolicyArn)
        (default,) = [v for v in self.policies[PolicyArn] if v["IsDefaultVersion"]]
        return {"Policy": {"DefaultVersionId": default["VersionId"]}}

    def create_policy(self, PolicyName, PolicyDocument, Description):  # noqa: N803
        self.policies[f"arn:aws:iam::222222222222:policy/{PolicyName}"] = [
            {"VersionId": "v1", "IsDefaultVersion": True, "Document": PolicyDocument, "CreateDate": 1}]

    def get_policy_version(self, PolicyArn, VersionId):  # noqa: N803
        (version,) = [v for v in self.policies[PolicyArn] if v["VersionId"] == VersionId]
        return {"PolicyVersion": {"Document": json.loads(version["Document"])}}

    def list_policy_versions(self, PolicyArn):  # noqa: N803
        return {"Versions": self.policies[PolicyArn]}

    def delete_policy_version(self, PolicyArn, VersionId):  # noqa: N803
        self.policies[PolicyArn] = [v for v in self.policies[PolicyArn] if v["VersionId"] != VersionId]

    def create_policy_version(self, PolicyArn, PolicyDocument, SetAsDefault):  # noqa: N803
        versions = self.policies[PolicyArn]
        for version in versions:
            version["IsDefaultVersion"] = False
        number = max(int(v["VersionId"][1:]) for v in versions) + 1
        versions.append({"VersionId": f"v{number}", "IsDefaultVersion": SetAsDefault, "Document": PolicyDocument,
                         "CreateDate": number})


def test_bootstrap_apply_creates_the_execution_policies_then_keeps_them_current(monkeypatch, tmp_path, capsys):
    staging = bootstrap.targets(bootstrap.load_config(None))[1]
    iam = FakeIam()
    assert bootstrap.ensure_policies(iam, staging) == [f"created coder-cdk-execution-platform-{n}" for n in (1, 2, 3)]
    assert bootstrap.ensure_policies(iam, staging) == [f"coder-cdk-execution-platform-{n} is current" for n in (1, 2, 3)]
    # A new resource type changed platform-2's committed document: it gets a new default version, IAM's five kept.
    directory = tmp_path / "execution-policies"
    directory.mkdir()
    for path in bootstrap.POLICY_DIRECTORY.glob("*.json"):
        (directory / path.name).write_text(path.read_text())
    grown = json.loads((directory / "platform-2.json").read_text())
    grown["Statement"][0]["Action"].append("ecs:PutClusterCapacityProviders")
    (directory / "platform-2.json").write_text(json.dumps(grown))
    monkeypatch.setattr(bootstrap, "POLICY_DIRECTORY", directory)
    arn = "arn:aws:iam::222222222222:policy/coder-cdk-execution-platform-2"
    for number in range(2, 6):  # four older versions besides the first: IAM holds five at most
        iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps({"v": number}), SetAsDefault=False)
    iam.policies[arn][0]["IsDefaultVersion"] = True
    assert bootstrap.ensure_policies(iam, staging)[1] == "updated coder-cdk-execution-platform-2"
    versions = iam.policies[arn]
    assert len(versions) == 5 and "v2" not in [v["VersionId"] for v in versions]  # the oldest non-default went
    (default,) = [v for v in versions if v["IsDefaultVersion"]]
    assert json.loads(default["Document"]) == grown


def test_bootstrap_apply_checks_every_profiles_account_before_changing_anything(capsys):
    calls, iam_calls = [], []
    accounts = {"tools": "111111111111", "stg": "222222222222", "prd": "222222222222"}  # prd is staging's account
    code = bootstrap.main(["--apply", "--profile", "pipeline=tools", "--profile", "staging=stg", "--profile",
                           "production=prd"], run=calls.append, iam_client=iam_calls.append, account_of=accounts.get)
    assert code == 2 and calls == [] and iam_calls == []
    assert "nothing was changed; profile prd (production) is account 222222222222, not 333333333333" in capsys.readouterr().err


def test_bootstrap_never_writes_over_the_assembly_and_names_the_config_it_was_given(capsys):
    example = ROOT / "config" / "examples" / "three-environments.toml"
    assert bootstrap.main(["--config", str(example)]) == 0
    out = capsys.readouterr().out
    bootstraps = [line for line in out.splitlines() if "npx cdk bootstrap" in line]
    assert bootstraps and all("--output build/bootstrap.out" in line for line in bootstraps)
    assert "make doctor CONFIG=config/examples/three-environments.toml" in out
    assert "make synth CONFIG=config/examples/three-environments.toml && npx cdk deploy --app cdk.out CoderPipeline" in out


def test_bootstrap_says_what_each_environment_needs_before_its_first_deploy(capsys, tmp_path):
    """The Key Provisioner image to push, and DNS: who validates the certificate and where the names point."""
    zoned = tmp_path / "zoned.toml"
    zoned.write_text(BASE.replace('hosted_zone_id = ""', 'hosted_zone_id = "Z0123456789ABCDEFGHIJ"', 1))
    assert bootstrap.main(["--config", str(zoned)]) == 0
    out = capsys.readouterr().out
    assert "staging: push 222222222222.dkr.ecr.us-west-2.amazonaws.com/key-provisioner:1.0.0" in out
    assert ("staging: ACM validates coder-staging.company.com and *.coder-staging.company.com in hosted zone "
            "Z0123456789ABCDEFGHIJ by itself") in out
    assert ("production: the first deploy waits until the CNAME records ACM shows for coder.company.com and "
            "*.coder.company.com (ACM console) are in your DNS") in out
    assert "production: once deployed, point coder.company.com and *.coder.company.com at the Platform stack's output " \
           "LoadBalancerDnsName" in out
    assert out.index("push 333333333333") < out.index("Check everything before the first deploy")


def test_a_connection_not_created_yet_fails_with_the_command_that_creates_it(aws, capsys):
    account, config = aws
    config.write_text(config.read_text().replace(f'connection_arn = "{CONNECTION}"', 'connection_arn = ""'))
    code, out = run_doctor(capsys, config, stubbed(lambda: account(PIPELINE)))
    assert code == 1
    assert "FAIL source connection: not created yet ([pipeline] connection_arn is empty)" in out
    assert "fix: aws codeconnections create-connection --provider-type GitHub --connection-name coder-source" in out
