"""LiteLLM: the AI gateway (Bedrock Claude, Anthropic, the corporate LLM gateway), config loaded from S3."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from config.model import EnvironmentConfig
from constructs_lib.compliance import acknowledge
from constructs_lib.fargate_service import FargateService, Listener, ServiceRuntime, ServiceSpec, task_role
from constructs_lib.litellm_config import (
    DEFAULT_PATH,
    LiteLLMConfig,
    LiteLLMConfigError,
    for_environment,
    load_litellm_config,
    region_problems,
)
from constructs_lib.secret_access import SecretAccess
from constructs_lib.service_catalogue import LANGFUSE_WEB, LITELLM
from constructs_lib.timeouts import TARGET_KEEP_ALIVE_SECONDS


class LiteLLMService(Construct):
    """Two tasks on regular Fargate (the gateway every workspace depends on), `ai.{domain}`, priority 400.

    - `litellm/config.yaml` is a file asset; LiteLLM reads it from S3 at start (LITELLM_CONFIG_BUCKET_*), and a
      changed file gives a new object key, so a new task definition and a rolling deploy.
    - The task role may invoke exactly the Bedrock models of that file and read exactly that object.
    - Health is `/health/readiness` (`/health` would call every model).
    - The replicas share usage state (limits, spend counters, the router's counts) through the Data stack's Redis
      (`redis_host`/`redis_port`: its primary endpoint; TLS and the AUTH token; litellm/config.yaml says how).
    - Idle connections stay open longer than the ALB keeps them (KEEPALIVE_TIMEOUT, constructs_lib/timeouts.py).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        runtime: ServiceRuntime,
        listener: elbv2.IApplicationListener,
        secrets: SecretAccess,
        redis_host: str,
        redis_port: str,
        config_path: Path = DEFAULT_PATH,
    ) -> None:
        super().__init__(scope, construct_id)
        # The environment's copy: inference profiles of its region's geography; without a gateway, none of its models.
        config_path = for_environment(config_path, config.qualifier, region=config.region, gateway=config.has_gateway)
        self.litellm_config = load_litellm_config(config_path)
        wrong_region = region_problems(self.litellm_config, config.region)
        if wrong_region:
            raise LiteLLMConfigError(f"{config_path}: environment {config.name} runs in {config.region}:\n  "
                                     + "\n  ".join(wrong_region))
        config_file = s3_assets.Asset(self, "ConfigFile", path=str(config_path))

        self.task_role = task_role(
            self, "TaskRole", f"{config.qualifier}: LiteLLM (Bedrock models of litellm/config.yaml, its config object)"
        )
        self.task_role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadConfigFile",
                actions=["s3:GetObject"],
                resources=[config_file.bucket.arn_for_objects(config_file.s3_object_key)],
            )
        )
        bedrock_resources = bedrock_model_arns(Stack.of(self), self.litellm_config)
        if bedrock_resources:
            self.task_role.add_to_policy(
                iam.PolicyStatement(
                    sid="InvokeConfiguredBedrockModels",
                    actions=["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"],
                    resources=bedrock_resources,
                )
            )
            acknowledge(
                self.task_role,
                {
                    f"AwsSolutions-IAM5[Resource::{arn}]": "A cross-region inference profile routes each call to the "
                    "same foundation model in one of the profile's regions; the model id is fixed, the region is not."
                    for arn in bedrock_resources
                    if ":bedrock:*:" in arn
                },
            )
        secrets.grant_read(self.task_role, "litellm/master-key", "litellm/anthropic-api-key")

        api_base = config.custom_llm_api_base.rstrip("/")
        gateway = {
            "CUSTOM_LLM_API_BASE": api_base,
            "CUSTOM_LLM_CLAUDE_API_BASE": f"{api_base}/claude/messages",
        } if config.has_gateway else {}
        environment = {
            # Production mode: no .env file is read at start (LiteLLM's production guide).
            "LITELLM_MODE": "PRODUCTION",
            # uvicorn closes idle connections after 5 s by default: the ALB would reuse closed ones (502s).
            "KEEPALIVE_TIMEOUT": str(TARGET_KEEP_ALIVE_SECONDS),
            # One uvicorn worker process per vCPU of the task (LiteLLM's production guide); they share state in Redis.
            "NUM_WORKERS": str(max(1, config.tasks.litellm.cpu // 1024)),
            "REDIS_HOST": redis_host,
            "REDIS_PORT": redis_port,
            "AWS_REGION_NAME": config.region,
            # The langfuse_otel callback (litellm/config.yaml) posts to <host>/api/public/otel. Traces carry prompts
            # and completions: over HTTPS through the internal ALB, never plain HTTP in the VPC.
            "LANGFUSE_OTEL_HOST": f"https://{LANGFUSE_WEB.routes[0].host_name(config.domain)}",
            "LITELLM_ANTHROPIC_DISABLE_URL_SUFFIX": "true",
            # The model price map bundled with this version, not one downloaded from GitHub at every start.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            **gateway,
            "LITELLM_CONFIG_BUCKET_NAME": config_file.s3_bucket_name,
            "LITELLM_CONFIG_BUCKET_OBJECT_KEY": config_file.s3_object_key,
        }
        container_secrets = {
            "DATABASE_URL": ecs.Secret.from_secrets_manager(secrets["litellm/database"], "url"),
            "LITELLM_MASTER_KEY": ecs.Secret.from_secrets_manager(secrets["litellm/master-key"], "master_key"),
            "LITELLM_SALT_KEY": ecs.Secret.from_secrets_manager(secrets["litellm/master-key"], "salt_key"),
            "ANTHROPIC_API_KEY": ecs.Secret.from_secrets_manager(secrets["litellm/anthropic-api-key"]),
            "REDIS_PASSWORD": ecs.Secret.from_secrets_manager(secrets["redis/auth-token"]),
            **({"CUSTOM_LLM_API_KEY": ecs.Secret.from_secrets_manager(secrets["custom-llm/api-key"])}
               if config.has_gateway else {}),
            "LANGFUSE_PUBLIC_KEY": ecs.Secret.from_secrets_manager(secrets["langfuse/api-keys"], "public_key"),
            "LANGFUSE_SECRET_KEY": ecs.Secret.from_secrets_manager(secrets["langfuse/api-keys"], "secret_key"),
        }
        missing = sorted(self.litellm_config.environment_names - set(environment) - set(container_secrets))
        if missing:
            raise LiteLLMConfigError(f"{config_path}: refers to os.environ/{', os.environ/'.join(missing)}, "
                                     "which the LiteLLM container does not get")
        self.service = FargateService(
            self,
            "Service",
            runtime=runtime,
            spec=ServiceSpec(
                service=LITELLM,
                image=config.images.litellm,
                cpu=config.tasks.litellm.cpu,
                memory_mib=config.tasks.litellm.memory_mib,
                desired_count=config.services.litellm_desired_count,
                command=("--port", str(LITELLM.port)),
                environment=environment,
                secrets=container_secrets,
            ),
            task_role=self.task_role,
            listener=Listener(listener, config.domain),
        )


def bedrock_model_arns(stack: Stack, litellm_config: LiteLLMConfig) -> list[str]:
    """Inference profiles in this account and region, plus the foundation models they route to (any region the
    profile spans); plain model ids in this region only."""
    arns: list[str] = []
    for model in litellm_config.bedrock_models:
        if model.is_inference_profile:
            arns.append(f"arn:{stack.partition}:bedrock:{stack.region}:{stack.account}:inference-profile/{model.model_id}")
            arns.append(f"arn:{stack.partition}:bedrock:*::foundation-model/{model.foundation_model_id}")
        else:
            arns.append(f"arn:{stack.partition}:bedrock:{stack.region}::foundation-model/{model.model_id}")
    return arns
