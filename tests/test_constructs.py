"""Guards of the reusable constructs: what they refuse, with which message (no synth of the whole app needed)."""

from __future__ import annotations

import pytest
from aws_cdk import App, Stack

from constructs_lib import python_lambda
from constructs_lib.fargate_service import Listener, ServiceSpec, _validate
from constructs_lib.litellm_config import LiteLLMConfigError, load_litellm_config
from constructs_lib.litellm_service import bedrock_model_arns
from constructs_lib.service_catalogue import AppService, Placement, Route

UNROUTED = AppService(name="svc", title="Service", port=8080, health_path="/health", placement=Placement.SERVICES)
ROUTED = AppService(name="web", title="Web", port=8080, health_path="/health", placement=Placement.SERVICES,
                    routes=(Route(100, "web"),))
LISTENER = Listener(listener=None, domain="example.com")  # type: ignore[arg-type]


def spec(service: AppService = UNROUTED, **overrides) -> ServiceSpec:
    values = dict(service=service, image="repo/image:1.0", cpu=256, memory_mib=512, desired_count=1)
    values.update(overrides)
    return ServiceSpec(**values)


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
        _validate(spec(**overrides), None)


def test_listener_and_routes_go_together():
    with pytest.raises(ValueError, match="a listener, but the catalogue gives the service no routes"):
        _validate(spec(UNROUTED), LISTENER)
    signed = AppService("ui", "UI", 80, "/health", Placement.SERVICES, routes=(Route(100, "ui", sign_in=True),))
    with pytest.raises(ValueError, match="a route with sign-in needs the listener's sign_in settings"):
        _validate(spec(signed), LISTENER)
    _validate(spec(ROUTED), LISTENER)


def test_service_spec_accepts_plain_configuration_and_spot_for_two_stateless_tasks():
    _validate(spec(environment={"LITELLM_CONFIG_BUCKET_NAME": "b", "PORT": "8100"}, use_spot=True, desired_count=2), None)


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


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
    config = load_litellm_config(write(tmp_path, """
model_list:
  - model_name: a
    litellm_params: {model: bedrock/us.anthropic.claude-sonnet-4-20250514-v1:0}
  - model_name: b
    litellm_params: {model: bedrock/converse/anthropic.claude-3-5-haiku-20241022-v1:0}
"""))
    stack = Stack(App(), "S", env={"account": "222222222222", "region": "us-west-2"})
    rendered = [str(stack.resolve(arn)) for arn in bedrock_model_arns(stack, config)]
    assert len(rendered) == 3
    assert any("inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0" in r and "222222222222" in r for r in rendered)
    assert any("bedrock:*::foundation-model/anthropic.claude-sonnet-4-20250514-v1:0" in r for r in rendered)
    assert any("bedrock:us-west-2::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0" in r for r in rendered)


def test_lambda_asset_without_installed_dependencies_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(python_lambda, "DEPENDENCIES_DIR", tmp_path)
    with pytest.raises(python_lambda.LambdaDependenciesMissing, match=r"run `make setup`.*db_bootstrap/requirements.txt"):
        python_lambda.dependencies_dir("db_bootstrap")
    assert python_lambda.dependencies_dir("secret_fields") is None  # no requirements: nothing to install
