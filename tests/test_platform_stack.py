"""PlatformStack, for both Stages: the seed's cluster/ALB/IAM/SSM assertions and the properties that matter."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def platform(assembly, stage):
    return assembly.stack(stage, "Platform")


def _attributes(load_balancer: dict) -> dict:
    return {a["Key"]: a["Value"] for a in load_balancer["LoadBalancerAttributes"]}


def _cluster(platform, name: str) -> dict:
    return platform.resources[platform.logical_id(f"/Platform/{name}/Resource")]["Properties"]


def test_clusters_with_container_insights_and_fargate_capacity(platform, env_config):
    """The platform services' cluster, and the workspaces' own (Coder may change services there only)."""
    clusters = {_cluster(platform, "Cluster")["ClusterName"]: _cluster(platform, "Cluster"),
                _cluster(platform, "WorkspaceCluster")["ClusterName"]: _cluster(platform, "WorkspaceCluster")}
    assert sorted(clusters) == [f"coder-{env_config.name}", f"coder-{env_config.name}-workspaces"]
    for cluster in clusters.values():
        assert cluster["ClusterSettings"] == [{"Name": "containerInsights", "Value": "enabled"}]
    providers = platform.props("AWS::ECS::ClusterCapacityProviderAssociations")
    assert [p["CapacityProviders"] for p in providers] == [["FARGATE", "FARGATE_SPOT"]] * 2


def test_certificate_covers_domain_and_wildcard(platform, env_config):
    certificate = platform.one("AWS::CertificateManager::Certificate")
    assert certificate["DomainName"] == env_config.domain
    assert certificate["SubjectAlternativeNames"] == [f"*.{env_config.domain}"]
    assert certificate["ValidationMethod"] == "DNS"


def test_internal_alb(platform):
    alb = platform.one("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert alb["Scheme"] == "internal"
    assert alb["Type"] == "application"
    subnets = json.dumps(alb["Subnets"])
    assert subnets.count("PrivateAppSubnet") == 2 and "Public" not in subnets
    assert "AlbSecurityGroup" in json.dumps(alb["SecurityGroups"])


def test_alb_attributes(platform, env_config):
    attributes = _attributes(platform.one("AWS::ElasticLoadBalancingV2::LoadBalancer"))
    # Coder's WebSockets need >= 300 s; LiteLLM's silent model calls set it (tests/test_timeouts.py).
    assert int(attributes["idle_timeout.timeout_seconds"]) == 660
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["access_logs.s3.enabled"] == "true"
    assert "AccessLogsBucket" in json.dumps(attributes["access_logs.s3.bucket"])
    assert attributes["deletion_protection.enabled"] == ("true" if env_config.is_production else "false")


def test_https_listeners_tls12_default_404(platform):
    """443 for the platform; 8443 for workspace direct access (the feature flag is on in the shipped config)."""
    listeners = platform.props("AWS::ElasticLoadBalancingV2::Listener")
    assert sorted((listener["Port"], listener["Protocol"]) for listener in listeners) == [(443, "HTTPS"), (8443, "HTTPS")]
    for listener in listeners:
        assert listener["SslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
        (action,) = listener["DefaultActions"]
        assert action["Type"] == "fixed-response"
        assert action["FixedResponseConfig"]["StatusCode"] == "404"
        assert listener["Certificates"] == [
            {"CertificateArn": {"Ref": platform.logical_id("/Platform/LoadBalancing/Certificate/Resource")}}]


def test_access_logs_bucket_accepts_alb_delivery(assembly, stage, env_config):
    network = assembly.stack(stage, "Network")
    buckets = {p["BucketName"] for p in network.props("AWS::S3::Bucket")}
    assert buckets == {f"coder-{env_config.name}-access-logs-{env_config.account}-{env_config.region}"}
    (policy,) = network.props("AWS::S3::BucketPolicy")
    writers = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow" and "s3:PutObject" in s["Action"]]
    # Each log writer may put objects under its own prefix only: ALB, S3 server access logs, VPC flow logs.
    account = env_config.account
    prefixes = {s["Resource"]["Fn::Join"][1][1] for s in writers}
    assert prefixes == {f"/alb/AWSLogs/{account}/*", "/s3-access/*", f"/vpc-flow-logs/AWSLogs/{account}/*"}
    (s3_logging,) = [s for s in writers if s.get("Sid") == "S3ServerAccessLogs"]
    assert s3_logging["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert s3_logging["Condition"] == {"StringEquals": {"aws:SourceAccount": account}}


def test_workspace_execution_role_reads_no_secrets(platform):
    """It pulls images and writes the workspaces' logs (reach: tests/test_tenants.py), and reads no secret: a
    template can never inject a platform secret into a workspace."""
    role = platform.resources[platform.logical_id("/Platform/Workspaces/WorkspaceExecutionRole/Resource")]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert "ManagedPolicyArns" not in role and "Policies" not in role
    (attached,) = [p for p in platform.props("AWS::IAM::Policy") if "WorkspaceExecutionRole" in json.dumps(p["Roles"])]
    actions = {a for s in attached["PolicyDocument"]["Statement"] for a in (s["Action"] if isinstance(s["Action"], list)
                                                                           else [s["Action"]])}
    assert actions == {"logs:CreateLogStream", "logs:PutLogEvents", "ecr:GetAuthorizationToken",
                       "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"}


def test_workspace_roles_write_logs_mount_homes_and_aem_reads_artifacts(platform, env_config):
    def statements(path):
        policy = platform.resources[platform.logical_id(f"/Platform/{path}/DefaultPolicy/Resource")]
        return {s.get("Sid"): s for s in policy["Properties"]["PolicyDocument"]["Statement"]}

    log_group = f"arn:aws:logs:{env_config.region}:{env_config.account}:log-group:/coder-{env_config.name}/workspaces*"
    workspace = statements("Workspaces/WorkspaceTaskRole")
    assert set(workspace) == {"WriteWorkspaceLogs", "MountHomeDirectories"}
    assert workspace["WriteWorkspaceLogs"]["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert workspace["WriteWorkspaceLogs"]["Resource"] == [log_group, f"{log_group}:log-stream:*"]
    # Home directories: the workspaces' file system only, through an access point (reach: tests/test_tenants.py).
    homes = workspace["MountHomeDirectories"]
    assert homes["Action"] == ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    assert "FileSystem8A8E25C0" in json.dumps(homes["Resource"]) and "Platform" not in json.dumps(homes["Resource"])
    assert homes["Condition"] == {"Null": {"elasticfilesystem:AccessPointArn": "false"}}
    aem = statements("Workspaces/AemWorkspaceTaskRole")
    assert aem["WriteWorkspaceLogs"] == workspace["WriteWorkspaceLogs"] and aem["MountHomeDirectories"] == homes
    bucket = f"arn:aws:s3:::coder-{env_config.name}-artifacts-{env_config.account}-{env_config.region}"
    assert (aem["ReadArtifactsObjects"]["Action"], aem["ReadArtifactsObjects"]["Resource"]) == ("s3:GetObject", f"{bucket}/*")
    assert (aem["ReadArtifactsList"]["Action"], aem["ReadArtifactsList"]["Resource"]) == ("s3:ListBucket", bucket)
    key = aem["ReadArtifactsKey"]
    assert key["Action"] == "kms:Decrypt" and "DataKey" in json.dumps(key["Resource"])
    assert key["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{env_config.region}.amazonaws.com"}}
    assert set(aem) == {"WriteWorkspaceLogs", "MountHomeDirectories", "ReadArtifactsObjects", "ReadArtifactsList",
                        "ReadArtifactsKey"}


def test_ecs_exec_only_where_allowed_and_every_session_logged(platform, env_config):
    cluster = _cluster(platform, "Cluster")
    assert "Configuration" not in _cluster(platform, "WorkspaceCluster")  # workspaces use Coder's agent, not ECS Exec
    policies = platform.props("AWS::IAM::ManagedPolicy")
    if not env_config.ecs_exec:  # production, by default
        assert "Configuration" not in cluster and policies == []
        assert all(p["EnableExecuteCommand"] is False for p in platform.props("AWS::ECS::Service"))
        assert "ssmmessages" not in json.dumps(platform.props("AWS::IAM::Policy"))
        return
    logs_key = {"Fn::GetStackOutput": {"StackName": f"{env_config.stage_id}-Network", "Region": env_config.region}}
    config = cluster["Configuration"]["ExecuteCommandConfiguration"]
    assert config["Logging"] == "OVERRIDE"
    assert config["LogConfiguration"] == {"CloudWatchLogGroupName": f"/coder-{env_config.name}/ecs-exec",
                                          "CloudWatchEncryptionEnabled": True}
    assert logs_key["Fn::GetStackOutput"].items() <= config["KmsKeyId"]["Fn::GetStackOutput"].items()
    assert "LogsKey" in config["KmsKeyId"]["Fn::GetStackOutput"]["OutputName"]
    (group,) = [g for g in platform.props("AWS::Logs::LogGroup") if g.get("LogGroupName") == f"/coder-{env_config.name}/ecs-exec"]
    assert group["RetentionInDays"] == 365 and "LogsKey" in json.dumps(group["KmsKeyId"])
    (policy,) = policies
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert sorted(statements["EcsExecSessionChannels"]["Action"]) == [
        "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
    ]
    assert "EcsExecLogs" in json.dumps(statements["EcsExecSessionLogs"]["Resource"])


def test_ssm_bridge_parameters(platform, env_config):
    params = {p["Name"]: p["Value"] for p in platform.props("AWS::SSM::Parameter")}
    prefix = f"/coder-{env_config.name}/"
    assert sorted(params) == sorted(prefix + n for n in (
        "cluster-arn", "cluster-name", "task-execution-role-arn", "workspace-task-role-arn",
        "workspace-sg-id", "private-subnet-ids", "efs-id", "alb-listener-arn",
    ))
    # Workspaces run in their own cluster, never in the platform's.
    workspaces = platform.logical_id("/Platform/WorkspaceCluster/Resource")
    assert params[prefix + "cluster-arn"] == {"Fn::GetAtt": [workspaces, "Arn"]}
    assert params[prefix + "cluster-name"] == {"Ref": workspaces}
    assert platform.resources[workspaces]["Properties"]["ClusterName"] == f"coder-{env_config.name}-workspaces"
    # Workspace direct access adds rules to its own listener, never to the platform's.
    assert params[prefix + "alb-listener-arn"] == {
        "Ref": platform.logical_id("/Platform/LoadBalancing/LoadBalancer/WorkspaceDirectAccess/Resource")}
    # Workspace task definitions get the workspace execution role (no secret access), not the platform's.
    assert params[prefix + "task-execution-role-arn"] == {
        "Fn::GetAtt": [platform.logical_id("/Platform/Workspaces/WorkspaceExecutionRole/Resource"), "Arn"]}
    assert params[prefix + "workspace-task-role-arn"] == {
        "Fn::GetAtt": [platform.logical_id("/Platform/Workspaces/WorkspaceTaskRole/Resource"), "Arn"]}
    assert "EcsWorkspacesSecurityGroup" in json.dumps(params[prefix + "workspace-sg-id"])
    assert "FileSystem" in json.dumps(params[prefix + "efs-id"])
    subnets = params[prefix + "private-subnet-ids"]["Fn::Join"][1]
    assert subnets[1] == "," and len(subnets) == 3
    assert all("PrivateAppSubnet" in json.dumps(part) for part in (subnets[0], subnets[2]))


def test_the_load_balancers_name_is_an_output_to_point_the_domain_at(platform, env_config):
    outputs = {name.rstrip("0123456789ABCDEF"): value for name, value in platform.body["Outputs"].items()}
    output = outputs["LoadBalancerDnsName"]
    balancer = platform.logical_id("/Platform/LoadBalancing/LoadBalancer/Resource")
    assert output["Value"] == {"Fn::GetAtt": [balancer, "DNSName"]}
    assert f"Point {env_config.domain} and *.{env_config.domain} here" in output["Description"]
