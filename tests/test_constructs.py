"""The reusable constructs in-process (no synth of the whole app needed): what their guards refuse, with which
message, and construct groups that keep their resources' logical ids.

The tests that build constructs live in this module and import the CDK (and what is built on it) when they run, not
at collection: every pytest worker collects every module, and importing `aws_cdk` costs a worker about 2.5 s of CPU
and a Node.js kernel. Only the worker that runs this module pays it.
"""

from __future__ import annotations

import pytest

from constructs_lib.litellm_config import DEFAULT_PATH, LiteLLMConfigError, load_litellm_config
from constructs_lib.service_catalogue import AppService, Placement, Route

UNROUTED = AppService(name="svc", title="Service", port=8080, health_path="/health", placement=Placement.SERVICES)
ROUTED = AppService(name="web", title="Web", port=8080, health_path="/health", placement=Placement.SERVICES,
                    routes=(Route(100, "web"),))


def validate(service: AppService = UNROUTED, listener: bool = False, **overrides) -> None:
    """fargate_service's guard on a ServiceSpec of `service` (with `overrides`), given a listener or none."""
    from constructs_lib.fargate_service import Listener, ServiceSpec, _validate

    values = dict(service=service, image="repo/image:1.0", cpu=256, memory_mib=512, desired_count=1)
    values.update(overrides)
    _validate(ServiceSpec(**values), Listener(listener=None, domain="example.com") if listener else None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"environment": {"DB_PASSWORD": "x"}}, "DB_PASSWORD look like credentials: pass them in `secrets`"),
        ({"environment": {"DATABASE_URL": "postgresql://u:p@h/d"}}, "DATABASE_URL look like credentials"),
        ({"environment": {"LITELLM_MASTER_KEY": "sk-1"}}, "LITELLM_MASTER_KEY look like credentials"),
        ({"use_spot": True, "desired_count": 1}, "Fargate Spot is only for stateless services running at least 2"),
        ({"use_spot": True, "desired_count": 2, "stateless": False}, "Fargate Spot is only for stateless"),
        ({"service": AppService("Bad_Name", "Bad", 80, "/health", Placement.SERVICES)}, "must be a lower-case DNS label"),
        ({"service": AppService("svc", "Svc", 80, "health", Placement.SERVICES)}, "health path 'health' must start with /"),
        ({"service": ROUTED}, "routes in the catalogue, but no listener to add them to"),
    ],
)
def test_service_spec_refusals(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(**overrides)


def test_listener_and_routes_go_together():
    with pytest.raises(ValueError, match="a listener, but the catalogue gives the service no routes"):
        validate(UNROUTED, listener=True)
    signed = AppService("ui", "UI", 80, "/health", Placement.SERVICES, routes=(Route(100, "ui", sign_in=True),))
    with pytest.raises(ValueError, match="a route with sign-in needs the listener's sign_in settings"):
        validate(signed, listener=True)
    validate(ROUTED, listener=True)


def test_service_spec_accepts_plain_configuration_and_spot_for_two_stateless_tasks():
    validate(environment={"LITELLM_CONFIG_BUCKET_NAME": "b", "PORT": "8100"}, use_spot=True, desired_count=2)


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# What every config must say besides its models: a request timeout the ALB does not cut, and the shared Redis state.
SETTINGS = """
litellm_settings:
  request_timeout: 600
  default_redis_ttl: 3600
  cache: true
  cache_params: {type: redis, host: os.environ/REDIS_HOST, port: os.environ/REDIS_PORT,
                 password: os.environ/REDIS_PASSWORD, ssl: true, db: 1, supported_call_types: []}
"""
MODEL = """
model_list:
  - model_name: a
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/KEY}
"""


def bedrock_models(*model_ids: str) -> str:
    """A config of these Bedrock models (named a, b, c...) and the settings every config needs."""
    lines = ["model_list:"] + [f"  - model_name: {chr(97 + i)}\n    litellm_params: {{model: bedrock/{model_id}}}"
                               for i, model_id in enumerate(model_ids)]
    return "\n".join(lines) + "\n" + SETTINGS


def test_litellm_config_with_the_settings_loads(tmp_path):
    config = load_litellm_config(write(tmp_path, MODEL + SETTINGS))
    assert config.request_timeout_seconds == 600
    assert {"REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD"} <= config.environment_names


@pytest.mark.parametrize(("change", "message"), [
    (("request_timeout: 600", "request_timeout: 661"), "request_timeout: 661; needs a number of seconds, at most 600: "
     "the ALB closes connections idle for 660 s"),
    (("request_timeout: 600", "request_timeout: true"), "request_timeout: True; needs a number of seconds"),
    (("  request_timeout: 600\n", ""), "request_timeout: None; needs a number of seconds"),
    (("cache: true", "cache: false"), "litellm_settings.cache: must be true"),
    (("ssl: true", "ssl: false"), "cache_params.ssl: False (needs True)"),
    (("supported_call_types: []", "supported_call_types: [acompletion]"),
     "cache_params.supported_call_types: ['acompletion'] (needs [])"),
    (("db: 1", "db: 0"), "cache_params.db: 0 (needs a database number other than 0, which holds Langfuse's queues)"),
    (("  default_redis_ttl: 3600\n", ""), "litellm_settings.default_redis_ttl: None (needs seconds, at most 86400"),
    (("  default_redis_ttl: 3600\n  cache: true\n", "  cache: true\n  default_redis_ttl: 3600\n"),
     "litellm_settings.default_redis_ttl: must come before `cache`"),
    (("password: os.environ/REDIS_PASSWORD", "password: hunter2hunter2"),
     "cache_params.password: a credential must be `os.environ/NAME`"),
    (("host: os.environ/REDIS_HOST", "host: localhost"), "cache_params.host: 'localhost' (needs 'os.environ/REDIS_HOST')"),
])
def test_litellm_config_refuses_a_timeout_the_alb_cuts_and_state_outside_redis(tmp_path, change, message):
    settings = SETTINGS.replace(*change)
    assert settings != SETTINGS
    with pytest.raises(LiteLLMConfigError) as error:
        load_litellm_config(write(tmp_path, MODEL + settings))
    assert message in str(error.value)


def test_litellm_config_refuses_literal_credentials_and_bad_models(tmp_path):
    path = write(tmp_path, """
model_list:
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o, api_key: sk-literal-key}
  - model_name: claude
    litellm_params: {model: bedrock/anthropic.claude-latest}
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/lower_case}
general_settings:
  master_key: sk-1234
""")
    with pytest.raises(LiteLLMConfigError) as error:
        load_litellm_config(path)
    text = str(error.value)
    assert "model_list[0].litellm_params.api_key: a credential must be `os.environ/NAME`" in text
    assert "'bedrock/anthropic.claude-latest' is not a versioned Bedrock model id" in text
    assert "model_list[2]: model_name 'gpt' appears twice" in text
    assert "model_list[2].litellm_params.api_key: a credential must be" in text
    assert "general_settings.master_key: a credential must be" in text


@pytest.mark.parametrize("text", ["", "model_list: []", "model_list: [\n", "general_settings: {}"])
def test_litellm_config_needs_a_model_list(tmp_path, text):
    with pytest.raises(LiteLLMConfigError, match=str(tmp_path)):
        load_litellm_config(write(tmp_path, text))


def test_bedrock_arns_for_profiles_and_plain_models(tmp_path):
    from aws_cdk import App, Stack

    from constructs_lib.litellm_service import bedrock_model_arns

    config = load_litellm_config(write(tmp_path, bedrock_models(
        "us.anthropic.claude-sonnet-4-20250514-v1:0", "converse/anthropic.claude-3-5-haiku-20241022-v1:0")))
    stack = Stack(App(), "S", env={"account": "222222222222", "region": "us-west-2"})
    rendered = [str(stack.resolve(arn)) for arn in bedrock_model_arns(stack, config)]
    assert len(rendered) == 3
    assert any("inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0" in r and "222222222222" in r for r in rendered)
    assert any("bedrock:*::foundation-model/anthropic.claude-sonnet-4-20250514-v1:0" in r for r in rendered)
    assert any("bedrock:us-west-2::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0" in r for r in rendered)


def test_lambda_asset_without_installed_dependencies_names_the_fix(tmp_path, monkeypatch):
    from constructs_lib import python_lambda

    monkeypatch.setattr(python_lambda, "DEPENDENCIES_DIR", tmp_path)
    with pytest.raises(python_lambda.LambdaDependenciesMissing, match=r"run `make setup`.*db_bootstrap/requirements.txt"):
        python_lambda.dependencies_dir("db_bootstrap")
    assert python_lambda.dependencies_dir("secret_fields") is None  # no requirements: nothing to install


# --- groups keep logical ids -------------------------------------------------------------------------------------


def _logical_ids(stack) -> list[str]:
    from aws_cdk import App

    template = App.of(stack).synth().get_stack_by_name(stack.stack_name).template
    return sorted(template["Resources"])


def test_unique_id_is_cdks():
    from aws_cdk import App, CfnResource, Stack
    from constructs import Construct

    from constructs_lib.stable_ids import unique_id

    stack = Stack(App(), "Plain")
    inner = Construct(Construct(stack, "Outer"), "Inner-Part")
    resources = [CfnResource(inner, "Resource", type="Test::Thing"), CfnResource(stack, "Top", type="Test::Thing"),
                 CfnResource(Construct(stack, "Default"), "Resource", type="Test::Thing")]
    ids = {stack.resolve(r.logical_id) for r in resources}
    assert ids == {unique_id(["Outer", "Inner-Part", "Resource"]), unique_id(["Top"]), unique_id(["Default", "Resource"])}


def test_a_group_keeps_its_resources_logical_ids():
    from aws_cdk import App, CfnResource, Stack
    from constructs import Construct

    from constructs_lib.stable_ids import Group

    app = App()
    plain, grouped = Stack(app, "Plain"), Stack(app, "Grouped")
    for scope in (plain, Group(grouped, "Database")):
        CfnResource(Construct(scope, "Postgres"), "Resource", type="Test::Thing")
        CfnResource(scope, "Secret", type="Test::Thing")
    assert _logical_ids(plain) == _logical_ids(grouped) == ["Postgres9DC8BB04", "Secret"]


def test_a_group_is_one_call_from_cdk_into_python_not_one_per_construct(monkeypatch):
    """Each aspect call crosses from Node.js into Python: a group's aspect runs once, however many constructs it holds."""
    from aws_cdk import App, CfnResource, Stack
    from constructs import Construct

    from constructs_lib import stable_ids
    from constructs_lib.stable_ids import Group, unique_id

    visits = []
    original = stable_ids._KeepLogicalIds.visit
    monkeypatch.setattr(stable_ids._KeepLogicalIds, "visit", lambda self, node: visits.append(node) or original(self, node))
    app = App()
    group = Group(Stack(app, "Grouped"), "Many")
    for index in range(20):
        CfnResource(Construct(group, f"Part{index}"), "Resource", type="Test::Thing")
    assert _logical_ids(Stack.of(group)) == sorted(unique_id([f"Part{i}", "Resource"]) for i in range(20))
    assert len(visits) == 1


def test_an_element_added_to_a_group_after_its_ids_were_kept_fails_synth():
    """CDK visits in tree order: an aspect that adds to a group once the group's ids are kept would leave the new
    resource with the group's id in its logical id (CloudFormation would replace it on the move). Synth refuses."""
    import jsii
    from aws_cdk import App, Aspects, CfnResource, IAspect, Stack
    from constructs import Construct

    from constructs_lib.stable_ids import Group

    @jsii.implements(IAspect)
    class AddsLate:
        def visit(self, node) -> None:
            if node.node.id == "Early":  # visited after the group's keeper
                CfnResource(Construct(node.node.scope, "Late"), "Resource", type="Test::Thing")

    app = App()
    stack = Stack(app, "Grouped")
    CfnResource(Construct(Group(stack, "Database"), "Early"), "Resource", type="Test::Thing")
    Aspects.of(stack).add(AddsLate())
    with pytest.raises(RuntimeError, match=r"Grouped/Database/Late/Resource: added to the group after its logical ids"):
        app.synth()


def test_groups_do_not_nest():
    from aws_cdk import App, Stack

    from constructs_lib.stable_ids import Group

    with pytest.raises(TypeError, match="a Group inside a Group"):
        Group(Group(Stack(App(), "S"), "Outer"), "Inner")


def test_a_pipeline_grant_on_every_resource_needs_a_reason_for_each_action():
    """A `Resource::*` finding of the pipeline's own policies is acknowledged by the actions on every resource, not by
    the finding: an action nobody explained fails synth with its name."""
    from pipeline.pipeline_stack import _UNSCOPED_ACTIONS, _pipeline_wildcard_reason

    described = {"Effect": "Allow", "Action": "cloudformation:DescribeStacks", "Resource": "*"}
    reason = _pipeline_wildcard_reason("Resource::*", {"Statement": [described]})
    assert reason == _UNSCOPED_ACTIONS["cloudformation:DescribeStacks"]
    builds = {"Effect": "Allow", "Action": ["codebuild:StartBuild", "s3:ListBucket"], "Resource": ["*"]}
    with pytest.raises(ValueError, match=r"grant codebuild:StartBuild on every resource"):
        _pipeline_wildcard_reason("Resource::*", {"Statement": [described, builds]})
    scoped = {"Effect": "Allow", "Action": "codebuild:StartBuild", "Resource": "arn:aws:codebuild:us-west-2:1:project/x"}
    denied = {"Effect": "Deny", "Action": "codebuild:StartBuild", "Resource": "*"}
    assert _pipeline_wildcard_reason("Resource::*", {"Statement": [described, scoped, denied]}) == reason
    all_but = {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}
    with pytest.raises(ValueError, match=r"grant every action but iam:\* on every resource"):
        _pipeline_wildcard_reason("Resource::*", {"Statement": [described, all_but]})


def test_build_control_leaves_a_statement_and_nothing_else():
    from pipeline.pipeline_stack import _without_build_control

    control = ["codebuild:BatchGetBuilds", "codebuild:StartBuild", "codebuild:StopBuild"]
    assert _without_build_control({"Effect": "Allow", "Action": control, "Resource": "*"}) is None
    mixed = {"Effect": "Allow", "Action": ["codebuild:StartBuild", "logs:PutLogEvents"], "Resource": "*"}
    assert _without_build_control(mixed) == {"Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": "*"}
    deny = {"Effect": "Deny", "Action": control, "Resource": "*"}
    assert _without_build_control(deny) == deny


def test_a_region_calls_only_its_geographys_inference_profiles(tmp_path):
    from constructs_lib.litellm_config import region_problems

    config = load_litellm_config(write(tmp_path, bedrock_models(
        *(f"{geography}.anthropic.claude-sonnet-4-20250514-v1:0" for geography in ("us", "eu", "global")),
        "anthropic.claude-3-5-haiku-20241022-v1:0")))
    assert region_problems(config, "eu-central-1") == [
        "bedrock/us.anthropic.claude-sonnet-4-20250514-v1:0 is a us inference profile, which eu-central-1 cannot call: "
        "use eu.anthropic.claude-sonnet-4-20250514-v1:0 or global.anthropic.claude-sonnet-4-20250514-v1:0"]
    assert region_problems(config, "us-west-2") == [
        "bedrock/eu.anthropic.claude-sonnet-4-20250514-v1:0 is a eu inference profile, which us-west-2 cannot call: "
        "use us.anthropic.claude-sonnet-4-20250514-v1:0 or global.anthropic.claude-sonnet-4-20250514-v1:0"]
    assert len(region_problems(config, "ap-northeast-1")) == 2  # neither us. nor eu.; apac., jp. or global. would do


def test_an_environment_gets_its_regions_inference_profiles(tmp_path):
    """us. profiles become eu. in eu-central-1 (global. and plain ids stay); the copy leaves out the gateway's models
    where there is no gateway; an environment that fits gets the file itself."""
    from constructs_lib.litellm_config import for_environment, region_problems

    path = write(tmp_path, bedrock_models("us.anthropic.claude-sonnet-4-20250514-v1:0",
                                          "global.anthropic.claude-sonnet-4-20250514-v1:0",
                                          "anthropic.claude-3-5-haiku-20241022-v1:0"))
    assert for_environment(path, "t-us", region="us-west-2", gateway=True) == path
    moved = load_litellm_config(for_environment(path, "t-eu", region="eu-central-1", gateway=True))
    assert [m.model_id for m in moved.bedrock_models] == [
        "eu.anthropic.claude-sonnet-4-20250514-v1:0", "global.anthropic.claude-sonnet-4-20250514-v1:0",
        "anthropic.claude-3-5-haiku-20241022-v1:0"]
    assert region_problems(moved, "eu-central-1") == []
    shipped = load_litellm_config(for_environment(DEFAULT_PATH, "t-apac", region="ap-southeast-1", gateway=False))
    assert all(m.model_id.startswith("apac.") for m in shipped.bedrock_models if m.is_inference_profile)
    assert not [name for name in shipped.model_names if name.startswith("custom-")]
    # A region of no profile geography keeps the file's ids, and synth refuses them there.
    assert region_problems(load_litellm_config(for_environment(DEFAULT_PATH, "t-me", region="me-central-1",
                                                               gateway=True)), "me-central-1")
