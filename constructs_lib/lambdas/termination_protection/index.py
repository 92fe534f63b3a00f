"""CloudFormation custom resource: turn on termination protection of the stack that holds it.

CDK Pipelines deploys stacks with CloudFormation actions that ignore a stack's `terminationProtection` setting, so the
stack protects itself while it deploys. On Delete (the resource removed from the template) protection stays on:
turning it off is a deliberate act of a person, never a side effect of a deploy.

The stack is the request's own `StackId`; the function's role may call UpdateTerminationProtection on that stack only.
"""

from __future__ import annotations

import logging

import boto3
from cfn_response import send_response

LOG = logging.getLogger()
LOG.setLevel(logging.INFO)


def protect(client, stack_id: str) -> None:
    client.update_termination_protection(EnableTerminationProtection=True, StackName=stack_id)


def handler(event: dict, context, client=None) -> None:
    status, reason = "SUCCESS", ""
    stack_id = event["StackId"]
    try:
        if event["RequestType"] in ("Create", "Update"):
            protect(client or boto3.client("cloudformation"), stack_id)
            LOG.info("termination protection on for %s", stack_id)
        else:
            LOG.info("resource deleted; termination protection of %s left on", stack_id)
    except Exception as error:  # report every failure to CloudFormation: the deploy must fail, not hang
        LOG.error("failed: %s", type(error).__name__)
        status, reason = "FAILED", f"{type(error).__name__}: {error}"[:500]
    send_response(event, context, status, event.get("PhysicalResourceId") or f"{stack_id}/termination-protection", reason)
