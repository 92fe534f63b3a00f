"""Key Provisioner: the admin UI that issues LiteLLM keys to Coder users, behind ALB OIDC sign-in."""

from __future__ import annotations

from aws_cdk import SecretValue
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from constructs import Construct

from config.model import EnvironmentConfig
from constructs_lib.fargate_service import FargateService, Listener, OidcAuthentication, ServiceRuntime, ServiceSpec, task_role
from constructs_lib.secret_access import SecretAccess
from constructs_lib.service_catalogue import CODER, KEY_PROVISIONER, LITELLM


class KeyProvisionerService(Construct):
    """One task behind its catalogue route (`admin.{domain}`) with ALB `authenticate-oidc` (Azure AD) before forwarding: the
    only route with sign-in at the ALB (API hosts must stay reachable by tokens). The client secret is a
    Secrets Manager dynamic reference, resolved by CloudFormation, never in the template."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        runtime: ServiceRuntime,
        listener: elbv2.IApplicationListener,
        secrets: SecretAccess,
    ) -> None:
        super().__init__(scope, construct_id)
        self.task_role = task_role(self, "TaskRole", f"{config.qualifier}: Key Provisioner (its secret and the LiteLLM master key)")
        secrets.grant_read(self.task_role, "key-provisioner/secret", "litellm/master-key")

        oidc = config.oidc
        authentication = OidcAuthentication(
            issuer=oidc.issuer_url,
            authorization_endpoint=oidc.authorization_endpoint,
            token_endpoint=oidc.token_endpoint,
            user_info_endpoint=oidc.user_info_endpoint,
            client_id=oidc.client_id,
            # Pinned to a version when the config names one, so that a new client secret reaches the ALB by a push.
            client_secret=SecretValue.secrets_manager(
                secrets["coder/oidc"].secret_arn, json_field="client_secret", version_id=oidc.client_secret_version
            ),
        )
        self.service = FargateService(
            self,
            "Service",
            runtime=runtime,
            spec=ServiceSpec(
                service=KEY_PROVISIONER,
                image=config.images.key_provisioner,
                cpu=config.tasks.key_provisioner.cpu,
                memory_mib=config.tasks.key_provisioner.memory_mib,
                desired_count=config.services.key_provisioner_desired_count,
                environment={
                    # It sends LiteLLM's master key: over HTTPS through the internal ALB, never plain HTTP in the VPC.
                    "LITELLM_URL": f"https://{LITELLM.routes[0].host_name(config.domain)}",
                    "CODER_URL": f"https://{CODER.routes[0].host_name(config.domain)}",
                    "PORT": str(KEY_PROVISIONER.port),
                },
                secrets={
                    "LITELLM_MASTER_KEY": ecs.Secret.from_secrets_manager(secrets["litellm/master-key"], "master_key"),
                    "PROVISIONER_SECRET": ecs.Secret.from_secrets_manager(secrets["key-provisioner/secret"]),
                },
            ),
            task_role=self.task_role,
            listener=Listener(listener, config.domain, sign_in=authentication),
        )
