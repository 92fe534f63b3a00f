"""The pipeline guard: a CodePipeline Lambda action between Synth and UpdatePipeline. It compares the pipeline template
the release synthesized (the Synth step's output artifact) with the pipeline stack deployed now, and fails the action
when the release widens what the pipeline may do (widening.py), unless a person allowed exactly that widening: an SSM
parameter `<ALLOWANCE_PATH><fingerprint>` holding their reason, which no role of the pipeline can write.

It takes the job's artifact from CodePipeline (GetJobDetails of the job id, and only a job of this pipeline's guard
action), reads the stack the assembly's manifest would deploy under the pipeline's name, and refuses an assembly that
would deploy another template or other stacks with it. Its code is the deployed release's, not the one under review:
a commit cannot change the guard that checks it. Any failure to decide fails the action (closed)."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import boto3
import widening

MESSAGE_LIMIT = 5000  # CodePipeline's failureDetails message
MIN_REASON = 25


class Refused(Exception):
    """The assembly or the job is not what the guard checks."""


def _job_data(codepipeline, job_id: str) -> dict:
    details = codepipeline.get_job_details(jobId=job_id)["jobDetails"]["data"]
    context = details.get("pipelineContext", {})
    where = (context.get("pipelineName"), context.get("action", {}).get("name"))
    if where != (os.environ["PIPELINE_NAME"], "PipelineGuard"):
        raise Refused(f"job {job_id} is not this pipeline's guard action ({where})")
    return details


def _template_to_deploy(zipped: zipfile.ZipFile) -> dict:
    """The template `cdk deploy <stack>` would deploy from this assembly, and nothing deployed along with it."""
    manifest = json.loads(zipped.read("manifest.json"))
    artifacts = manifest.get("artifacts", {})
    stack_name = os.environ["STACK_NAME"]
    found = [(artifact_id, a) for artifact_id, a in artifacts.items() if a.get("type") == "aws:cloudformation:stack"
             and a.get("properties", {}).get("stackName", artifact_id) == stack_name]
    if len(found) != 1:
        raise Refused(f"the assembly holds {len(found)} stacks named {stack_name}")
    artifact_id, artifact = found[0]
    template_file = artifact["properties"].get("templateFile")
    if template_file != os.environ["TEMPLATE_FILE"]:
        raise Refused(f"{stack_name} would deploy {template_file!r}, not {os.environ['TEMPLATE_FILE']}")
    for dependency in artifact.get("dependencies", []):
        if artifacts.get(dependency, {}).get("type") != "cdk:asset-manifest":
            raise Refused(f"{stack_name} would deploy {dependency} along with it")
    return json.loads(zipped.read(template_file))


def _new_template(job_data: dict) -> dict:
    location = job_data["inputArtifacts"][0]["location"]["s3Location"]
    credentials = job_data["artifactCredentials"]
    s3 = boto3.client("s3", aws_access_key_id=credentials["accessKeyId"],
                      aws_secret_access_key=credentials["secretAccessKey"], aws_session_token=credentials["sessionToken"])
    with tempfile.TemporaryFile() as archive:
        body = s3.get_object(Bucket=location["bucketName"], Key=location["objectKey"])["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            archive.write(chunk)
        archive.seek(0)
        with zipfile.ZipFile(archive) as zipped:
            return _template_to_deploy(zipped)


def _deployed_template(cloudformation) -> dict | None:
    try:
        body = cloudformation.get_template(StackName=os.environ["STACK_NAME"], TemplateStage="Original")["TemplateBody"]
    except cloudformation.exceptions.ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return json.loads(body) if isinstance(body, str) else body


def _allowance(ssm):
    """The reason a person put for exactly this widening (SSM parameter named by its fingerprint), or None."""
    def allowed(fingerprint: str) -> str | None:
        try:
            value = ssm.get_parameter(Name=f"{os.environ['ALLOWANCE_PATH']}{fingerprint}")["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            return None
        return value if len(value.strip()) >= MIN_REASON else None

    return allowed


def handler(event, _context, codepipeline=None, cloudformation=None, ssm=None):
    job_id = event["CodePipeline.job"]["id"]
    codepipeline = codepipeline or boto3.client("codepipeline")
    cloudformation = cloudformation or boto3.client("cloudformation")
    ssm = ssm or boto3.client("ssm")
    try:
        new = _new_template(_job_data(codepipeline, job_id))
        passed, message = widening.decide(
            _deployed_template(cloudformation), new,
            tuple(filter(None, os.environ.get("GUARD_LOGICAL_IDS", "").split(","))), _allowance(ssm))
    except Exception as error:  # cannot decide: closed
        passed, message = False, f"the pipeline guard could not decide: {type(error).__name__}: {error}"
    print(message)
    if passed:
        codepipeline.put_job_success_result(jobId=job_id)
    else:
        codepipeline.put_job_failure_result(jobId=job_id, failureDetails={
            "type": "JobFailed", "message": message[:MESSAGE_LIMIT]})
    return {"passed": passed}
