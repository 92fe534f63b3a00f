"""Production's Data stack turns its own termination protection on while it deploys (CDK Pipelines' deploy actions
ignore the stack setting). The handler runs against botocore's Stubber (moto lacks UpdateTerminationProtection) and
answers a real local HTTPS server, as it answers CloudFormation's pre-signed URL."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from tests.cfn_server import ResponseRecorder
from tests.lambdas import load_handler

handler_module = load_handler("termination_protection")
STACK_ID = "arn:aws:cloudformation:us-west-2:333333333333:stack/Production-Data/7d1e0a40-0000-4000-8000-000000000001"


def event(request_type: str, url: str) -> dict:
    return {"RequestType": request_type, "ResponseURL": url, "StackId": STACK_ID, "RequestId": "req-1",
            "LogicalResourceId": "TerminationProtection", "ResourceProperties": {"Enabled": "true"}}


@pytest.fixture
def cloudformation():
    client = boto3.client("cloudformation", region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_create_and_update_protect_the_requesting_stack(cloudformation, response_url, request_type):
    client, stubber = cloudformation
    stubber.add_response("update_termination_protection", {"StackId": STACK_ID},
                         {"EnableTerminationProtection": True, "StackName": STACK_ID})
    handler_module.handler(event(request_type, response_url), None, client=client)
    (response,) = ResponseRecorder.received
    assert (response["Status"], response["PhysicalResourceId"]) == ("SUCCESS", f"{STACK_ID}/termination-protection")


def test_delete_leaves_protection_on(cloudformation, response_url):
    client, _ = cloudformation  # no stubbed call: any call to CloudFormation would fail the test
    handler_module.handler(event("Delete", response_url), None, client=client)
    (response,) = ResponseRecorder.received
    assert response["Status"] == "SUCCESS"


def test_a_refusal_fails_the_deploy_with_the_reason(cloudformation, response_url):
    client, stubber = cloudformation
    stubber.add_client_error("update_termination_protection", "AccessDenied", "not authorized to perform it")
    handler_module.handler(event("Create", response_url), None, client=client)
    (response,) = ResponseRecorder.received
    assert response["Status"] == "FAILED"
    assert "AccessDenied" in response["Reason"] and "not authorized" in response["Reason"]


def test_production_data_stack_applies_protection_to_itself_only(assembly):
    data = assembly.stack("Production", "Data")
    (resource,) = data.of_type("Custom::TerminationProtection").values()
    function = data.logical_id("/Data/TerminationProtection/Function/Resource")
    assert resource["Properties"]["ServiceToken"] == {"Fn::GetAtt": [function, "Arn"]}
    props = data.resources[function]["Properties"]
    assert (props["Handler"], props["Runtime"]) == ("index.handler", "python3.14")
    (policy,) = [r["Properties"] for r in data.of_type("AWS::IAM::Policy").values()
                 if "/TerminationProtection/" in r["Metadata"]["aws:cdk:path"]]
    assert policy["PolicyDocument"]["Statement"] == [{
        "Action": "cloudformation:UpdateTerminationProtection", "Effect": "Allow", "Resource": {"Ref": "AWS::StackId"},
        "Sid": "ProtectThisStack"}]
    assert function in resource["DependsOn"]  # the policy exists before the first call


def test_other_environments_are_not_protected(assembly):
    assert assembly.stack("Staging", "Data").of_type("Custom::TerminationProtection") == {}
