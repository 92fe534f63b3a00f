"""The delivery pipeline: source on main, synth with `make synth`, self-mutation, staging, approval, production."""

from __future__ import annotations

import json

import pytest

from tests.assembly import ROOT
from tests.synths import VARIANT_EMAIL


def pinned_version(tool: str) -> str:
    """The version package.json pins (devDependencies): what the pipeline must install, and nothing newer."""
    return json.loads((ROOT / "package.json").read_text())["devDependencies"][tool]


@pytest.fixture(scope="module")
def pipeline(assembly):
    return assembly.templates["CoderPipeline"]


@pytest.fixture(scope="module")
def stages(pipeline):
    return {s["Name"]: s["Actions"] for s in pipeline.one("AWS::CodePipeline::Pipeline")["Stages"]}


def _ordered(actions):
    return [a["Name"] for a in sorted(actions, key=lambda a: (a["RunOrder"], a["Name"]))]


def test_stage_order(pipeline):
    names = [s["Name"] for s in pipeline.one("AWS::CodePipeline::Pipeline")["Stages"]]
    assert names == ["Source", "Build", "UpdatePipeline", "Assets", "Staging", "Production"]


def test_pipeline_type_and_name(pipeline, app_config):
    props = pipeline.one("AWS::CodePipeline::Pipeline")
    assert props["PipelineType"] == "V2"
    assert props["Name"] == f"{app_config.project.name}-platform"


def test_source_is_the_configured_connection_on_main(stages, app_config):
    (source,) = stages["Source"]
    assert source["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    config = source["Configuration"]
    assert config["ConnectionArn"] == app_config.pipeline.connection_arn
    assert config["FullRepositoryId"] == app_config.pipeline.repository
    assert config["BranchName"] == "main"
    assert config.get("DetectChanges", True) is True  # every push to main starts the pipeline


def test_synth_runs_make_synth_on_node_22(pipeline, stages):
    synth, _guard = sorted(stages["Build"], key=lambda a: a["RunOrder"])  # then the pipeline guard (test_pipeline_guard)
    project_id = synth["Configuration"]["ProjectName"]["Ref"]
    project = pipeline.resources[project_id]["Properties"]
    spec = json.loads(project["Source"]["BuildSpec"])
    assert spec["phases"]["build"]["commands"] == ["make synth"]
    assert spec["phases"]["install"]["runtime-versions"]["nodejs"] == "22"
    assert spec["artifacts"]["base-directory"] == "cdk.out"
    assert project["Environment"]["Image"] == "aws/codebuild/standard:7.0"
    assert project["Environment"]["PrivilegedMode"] is False  # no Docker in the pipeline
    # pip's and npm's downloads cached between runs, keyed by the lock files.
    assert spec["cache"]["key"].startswith("synth-$(codebuild-hash-files requirements.lock package-lock.json")
    assert spec["cache"]["paths"] == ["/root/.cache/pip/**/*", "/root/.npm/**/*"]
    assert project["Cache"]["Type"] == "S3"
    bucket = pipeline.logical_id("/BuildCache/Bucket/Resource")
    assert project["Cache"]["Location"] == {"Fn::Join": ["/", [{"Ref": bucket}, "synth"]]}
    cache = pipeline.resources[bucket]["Properties"]
    assert cache["LifecycleConfiguration"]["Rules"][-1]["ExpirationInDays"] == 30
    assert cache["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] is True
    # Only the Synth step may write it (pip installs what it finds there), and the bucket policy allows nobody else.
    writers = {s["Role"] for s in _statements(pipeline) if s["Effect"] == "Allow" and bucket in json.dumps(s["Resource"])
               and any(a.startswith(("s3:Put", "s3:Delete", "s3:*")) for a in _listed(s["Action"]))}
    assert writers == {project["ServiceRole"]["Fn::GetAtt"][0]}
    (policy,) = [p for p in pipeline.props("AWS::S3::BucketPolicy") if p["Bucket"] == {"Ref": bucket}]
    assert {s["Effect"] for s in policy["PolicyDocument"]["Statement"]} == {"Deny"}


def test_self_mutation_uses_the_pinned_cli(pipeline, stages):
    (mutate,) = stages["UpdatePipeline"]
    project = pipeline.resources[mutate["Configuration"]["ProjectName"]["Ref"]]["Properties"]
    spec = json.loads(project["Source"]["BuildSpec"])
    assert spec["phases"]["install"]["commands"] == [f"npm install -g aws-cdk@{pinned_version('aws-cdk')}"]
    assert spec["phases"]["build"]["commands"] == ["cdk -a . deploy CoderPipeline --require-approval=never --verbose"]


@pytest.mark.parametrize("tool", ["aws-cdk", "cdk-assets"])
def test_tool_pins_match_package_lock(tool):
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"][f"node_modules/{tool}"]["version"] == pinned_version(tool)


def _build_spec(pipeline, project: dict) -> dict:
    """A project's buildspec: inline, or (asset publishing) a file CDK writes next to the template."""
    spec = project["Source"]["BuildSpec"]
    return json.loads(spec if spec.lstrip().startswith("{") else (pipeline.path.parent / spec).read_text())


def test_asset_publishing_installs_the_pinned_cdk_assets_and_nothing_is_latest(pipeline, stages):
    specs = [_build_spec(pipeline, p) for p in pipeline.props("AWS::CodeBuild::Project")]
    assert len(specs) == 9 and not [s for s in specs if "@latest" in json.dumps(s)], "an unpinned tool in a build"
    # Each step installs only what it runs: synth's set-up (make synth), boto3 (+ cfn-lint's schemas for the review).
    installs = {json.dumps(s["phases"].get("install", {}).get("commands", [])) for s in specs}
    assert not [i for i in installs if "requirements-dev" in i or "pytest" in i or "moto" in i]
    assert stages["Assets"]
    for action in stages["Assets"]:
        project = pipeline.resources[action["Configuration"]["ProjectName"]["Ref"]]["Properties"]
        install = _build_spec(pipeline, project)["phases"]["install"]["commands"]
        assert install == [f"npm install -g cdk-assets@{pinned_version('cdk-assets')}"]


@pytest.mark.parametrize("stage", ["Staging", "Production"])
def test_each_stage_deploys_its_stacks_in_layer_order(stages, stage, app_config):
    env = app_config.environment(stage)
    deploys = [a for a in stages[stage] if a["ActionTypeId"]["Category"] == "Deploy"]
    # One action per stack, no change set (use_change_sets=False): CloudFormation creates or updates it directly.
    assert _ordered(deploys) == ["Network.Deploy", "Data.Deploy", "Platform.Deploy", "Observability.Deploy"]
    assert len({a["RunOrder"] for a in deploys}) == 4
    for action in deploys:
        assert action["Configuration"]["ActionMode"] == "CREATE_UPDATE"
        assert action["Configuration"]["StackName"].startswith(f"{stage}-")
        # Deployed through the target account's bootstrap roles, not from the pipeline account.
        assert f":iam::{env.account}:role/cdk-hnb659fds-deploy-role-{env.account}-{env.region}" in json.dumps(
            action["RoleArn"]
        )


def test_production_waits_for_manual_approval(stages):
    production = stages["Production"]
    approvals = [a for a in production if a["ActionTypeId"]["Category"] == "Approval"]
    assert [a["Name"] for a in approvals] == ["PromoteToProduction"]
    first_deploy = min(a["RunOrder"] for a in production if a["ActionTypeId"]["Category"] == "Deploy")
    assert approvals[0]["RunOrder"] < first_deploy
    assert not [a for a in stages["Staging"] if a["ActionTypeId"]["Category"] == "Approval"]


def test_artifacts_encrypted_with_a_rotated_cross_account_key(pipeline):
    keys = pipeline.props("AWS::KMS::Key")
    assert len(keys) == 3 and all(k["EnableKeyRotation"] is True for k in keys)  # artifacts, notifications, guard logs
    bucket = pipeline.resources[pipeline.logical_id("/Pipeline/Pipeline/ArtifactsBucket/Resource")]["Properties"]
    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert rule["SSEAlgorithm"] == "aws:kms"
    assert rule["KMSMasterKeyID"] == {
        "Fn::GetAtt": [pipeline.logical_id("/Pipeline/Pipeline/ArtifactsBucketEncryptionKey/Resource"), "Arn"]}
    # Server access logs go to the pipeline's own log bucket.
    assert bucket["LoggingConfiguration"]["LogFilePrefix"] == "artifacts/"
    assert bucket["LoggingConfiguration"]["DestinationBucketName"] == {
        "Ref": pipeline.logical_id("/AccessLogsBucket/Bucket/Resource")}
    pipeline_props = pipeline.one("AWS::CodePipeline::Pipeline")
    assert pipeline_props["ArtifactStore"]["EncryptionKey"]["Type"] == "KMS"


BUILD_CONTROL = {"codebuild:BatchGetBuilds", "codebuild:StartBuild", "codebuild:StopBuild"}


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _statements(pipeline, role: str | None = None) -> list[dict]:
    """The statements of the pipeline stack's IAM policies (of one role's, given its logical id), with "Role" set."""
    return [{**statement, "Role": attached["Ref"]}
            for policy in pipeline.props("AWS::IAM::Policy") for attached in policy["Roles"]
            for statement in policy["PolicyDocument"]["Statement"] if role in (None, attached["Ref"])]


def test_builds_are_started_only_by_the_pipeline_and_only_its_own(pipeline):
    """Starting a build can override its buildspec: whoever may start self-mutation's build runs anything with its
    role, which deploys to every environment. Only the role CodePipeline's actions run with may, on this pipeline's
    projects. (CDK Pipelines also gave it to the asset publishing role, on every project of the account.)"""
    granted = [s for s in _statements(pipeline) if s["Effect"] == "Allow" and BUILD_CONTROL & set(_listed(s["Action"]))]
    action_role = pipeline.logical_id("/Pipeline/CodeBuildActionRole/Resource")
    assert [s["Role"] for s in granted] == [action_role]
    assert set(granted[0]["Action"]) == BUILD_CONTROL
    projects = [{"Fn::GetAtt": [logical_id, "Arn"]} for logical_id, resource in pipeline.resources.items()
                if resource["Type"] == "AWS::CodeBuild::Project"]
    assert len(projects) == 9 and sorted(map(json.dumps, granted[0]["Resource"])) == sorted(map(json.dumps, projects))
    (trust,) = pipeline.resources[action_role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": {"Fn::GetAtt": [pipeline.logical_id("/Pipeline/Pipeline/Role/Resource"), "Arn"]}}


def test_asset_publishing_role_publishes_and_does_nothing_else(pipeline, app_config):
    """The role of the Assets builds (cdk-assets): assume each environment's file-publishing role, read the run's
    artifacts, write its own logs and reports. Only CodeBuild may assume it."""
    role = pipeline.logical_id("/Pipeline/Assets/FileRole/Resource")
    statements = _statements(pipeline, role)
    assert {action for s in statements for action in _listed(s["Action"])} == {
        "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
        "codebuild:BatchPutCodeCoverages", "codebuild:BatchPutTestCases", "codebuild:CreateReport",
        "codebuild:CreateReportGroup", "codebuild:UpdateReport",
        "sts:AssumeRole", "s3:GetBucket*", "s3:GetObject*", "s3:List*", "kms:Decrypt", "kms:DescribeKey"}
    assert all(s["Effect"] == "Allow" and "*" not in _listed(s["Resource"]) for s in statements)
    (assume,) = [s for s in statements if s["Action"] == "sts:AssumeRole"]
    assert assume["Resource"] == [
        {"Fn::Sub": f"arn:${{AWS::Partition}}:iam::{e.account}:role/cdk-hnb659fds-file-publishing-role-{e.account}-{e.region}"}
        for e in app_config.environments]
    (trust,) = pipeline.resources[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "codebuild.amazonaws.com"}


def test_stages_target_the_configured_accounts(assembly, app_config):
    for env in app_config.environments:
        stage = env.stage_id
        for layer in ("Network", "Data", "Platform"):
            directory = assembly.stack(stage, layer).path.parent
            manifest = json.loads((directory / "manifest.json").read_text())
            environments = {
                a["environment"] for a in manifest["artifacts"].values() if a["type"] == "aws:cloudformation:stack"
            }
            assert environments == {f"aws://{env.account}/{env.region}"}


# --- compliance gate and notifications ---------------------------------------------------------------------------


def _project_spec(pipeline, action):
    project = pipeline.resources[action["Configuration"]["ProjectName"]["Ref"]]["Properties"]
    return project, json.loads(project["Source"]["BuildSpec"])


@pytest.mark.parametrize("stage_name", ["Staging", "Production"])
def test_compliance_step_runs_before_the_stage_deploys(pipeline, stages, stage_name):
    actions = stages[stage_name]
    (step,) = [a for a in actions if a["Name"] == f"Compliance{stage_name}"]
    deploys = [a for a in actions if a["ActionTypeId"]["Category"] == "Deploy"]
    assert step["RunOrder"] < min(a["RunOrder"] for a in deploys)
    # It reads the synth output (cdk.out) next to the repository's code.
    assert len(step["InputArtifacts"]) == 2
    project, spec = _project_spec(pipeline, step)
    assert project["Name"] == f"coder-compliance-{stage_name.lower()}"
    assert spec["phases"]["build"]["commands"] == [
        f"python -m pipeline.compliance --assembly cdk.out --stage {stage_name} --junit reports/compliance.xml"
        " --markdown reports/compliance.md --json reports/compliance.json"
    ]
    assert spec["reports"]["compliance"] == {"base-directory": "reports", "files": ["compliance.xml"], "file-format": "JUNITXML"}
    # The Markdown report goes to the log, also when the step fails; no artifact (only Synth writes what deploys).
    assert spec["phases"]["post_build"]["commands"] == ["[ ! -f reports/compliance.md ] || cat reports/compliance.md"]
    assert "artifacts" not in spec and "OutputArtifacts" not in step


def test_approval_notifies_and_links_to_productions_release_review(pipeline, stages, app_config):
    production = stages["Production"]
    (approval,) = [a for a in production if a["ActionTypeId"]["Category"] == "Approval"]
    (compliance,) = [a for a in production if a["Name"] == "ComplianceProduction"]
    (review,) = [a for a in production if a["Name"] == "ReviewProduction"]
    # Both reports exist when the approver opens them.
    assert compliance["RunOrder"] < approval["RunOrder"] and review["RunOrder"] < approval["RunOrder"]
    config = approval["Configuration"]
    assert config["NotificationArn"] == {"Ref": pipeline.logical_id("/Notifications/Resource")}
    region, account = app_config.pipeline.region, app_config.pipeline.account
    assert config["ExternalEntityLink"] == (
        f"https://{region}.console.aws.amazon.com/codesuite/codebuild/{account}/testReports/reportGroups/"
        f"coder-review-production-changes?region={region}"
    )
    assert "what this release changes in production" in config["CustomData"]


@pytest.mark.parametrize("stage_name", ["Staging", "Production"])
def test_release_review_runs_before_the_stage_deploys_against_what_is_deployed(pipeline, stages, stage_name, app_config):
    env = app_config.environment(stage_name)
    actions = stages[stage_name]
    (step,) = [a for a in actions if a["Name"] == f"Review{stage_name}"]
    deploys = [a for a in actions if a["ActionTypeId"]["Category"] == "Deploy"]
    assert step["RunOrder"] < min(a["RunOrder"] for a in deploys)  # a blocking change stops it before any deploy
    project, spec = _project_spec(pipeline, step)
    assert project["Name"] == f"coder-review-{stage_name.lower()}"
    assert spec["phases"]["build"]["commands"] == [
        f"python -m pipeline.changes --base deployed --drift --assembly cdk.out --stage {stage_name} --junit reports/changes.xml"
        ' --markdown reports/changes.md --json reports/changes.json --notify "$NOTIFICATIONS_TOPIC"'
    ]
    assert spec["reports"]["changes"] == {"base-directory": "reports", "files": ["changes.xml"], "file-format": "JUNITXML"}
    assert spec["phases"]["post_build"]["commands"] == ["[ ! -f reports/changes.md ] || cat reports/changes.md"]
    assert "artifacts" not in spec and "OutputArtifacts" not in step
    assert spec["phases"]["install"]["commands"][-1] == (
        "python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r buildspecs/locks/boto3.txt")
    variables = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert variables["NOTIFICATIONS_TOPIC"] == {"Ref": pipeline.logical_id("/Notifications/Resource")}
    role_id = project["ServiceRole"]["Fn::GetAtt"][0]
    (policy,) = [p for p in pipeline.props("AWS::IAM::Policy") if p["Roles"] == [{"Ref": role_id}]]
    statements = {s.get("Sid"): s for s in policy["PolicyDocument"]["Statement"]}
    assert statements["ReadDeployedTemplates"]["Resource"] == (
        f"arn:aws:iam::{env.account}:role/cdk-hnb659fds-lookup-role-{env.account}-{env.region}")
    assert statements["PublishSummary"]["Resource"] == {"Ref": pipeline.logical_id("/Notifications/Resource")}


def test_notifications_topic_is_encrypted_and_https_only(pipeline, app_config):
    topic = pipeline.resources[pipeline.logical_id("/Notifications/Resource")]["Properties"]
    assert topic["TopicName"] == "coder-pipeline-notifications"
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": [pipeline.logical_id("/NotificationsKey/Resource"), "Arn"]}
    (policy,) = pipeline.props("AWS::SNS::TopicPolicy")
    statements = policy["PolicyDocument"]["Statement"]
    assert {"Bool": {"aws:SecureTransport": "false"}} in [s.get("Condition") for s in statements if s["Effect"] == "Deny"]
    subscriptions = pipeline.props("AWS::SNS::Subscription")
    email = app_config.pipeline.notification_email
    assert [s["Endpoint"] for s in subscriptions] == ([email] if email else [])


def test_only_this_accounts_notification_rules_publish_to_the_topic(pipeline, app_config):
    (policy,) = pipeline.props("AWS::SNS::TopicPolicy")
    allows = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allows] == [{"Service": "codestar-notifications.amazonaws.com"}]
    assert allows[0]["Condition"] == {"StringEquals": {"aws:SourceAccount": app_config.pipeline.account}}


def test_pipeline_failures_notify_the_topic(pipeline):
    (rule,) = pipeline.props("AWS::CodeStarNotifications::NotificationRule")
    assert rule["EventTypeIds"] == ["codepipeline-pipeline-pipeline-execution-failed"]
    assert rule["Targets"] == [{"TargetAddress": {"Ref": pipeline.logical_id("/Notifications/Resource")}, "TargetType": "SNS"}]
    assert rule["Resource"]["Fn::Join"][1][1] == {"Ref": pipeline.logical_id("/Pipeline/Pipeline/Resource")}


def test_configured_email_subscribes_to_the_topic(variant):
    pipeline = variant.assembly.templates["CoderPipeline"]
    (subscription,) = pipeline.props("AWS::SNS::Subscription")
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("email", VARIANT_EMAIL)
    assert subscription["TopicArn"] == {"Ref": pipeline.logical_id("/Notifications/Resource")}
