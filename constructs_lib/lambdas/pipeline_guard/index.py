"""The pipeline guard: a CodePipeline Lambda action between Synth and UpdatePipeline. It compares the pipeline template
the release synthesized (the Synth step's output artifact) with the pipeline stack deployed now, and fails the action
when the release widens what the pipeline may do (widening.py), unless a person allowed exactly that widening: an SSM
parameter `<ALLOWANCE_PATH><fingerprint>` holding their reason, which no role of the pipeline can write.

It takes the job's artifact from CodePipeline (GetJobDetails of the job id, and only a job of this pipeline's guard
action), reads the stack the assembly's manifest would deploy under the pipeline's name, and refuses an assembly that
would deploy another template or other stacks with it, but CDK's cross-region support stacks, which it checks the same
way (against the deployed ones, each in its region). Its code is the deployed release's, not the one under review:
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


def _stacks_to_deploy(zipped: zipfile.ZipFile) -> dict[str, tuple[str, dict]]:
    """{stack name: (region, template)}: the stack `cdk deploy <stack>` would deploy from this assembly, first, and the
    CDK cross-region support stacks it deploys along with it (`<stack>-support-<region>`, in the pipeline's account:
    an environment in another region than the pipeline's). Anything else deployed along with it is refused."""
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
    account, region = _environment(artifact)
    stacks = {stack_name: (region, json.loads(zipped.read(template_file)))}
    for dependency in artifact.get("dependencies", []):
        other = artifacts.get(dependency, {})
        if other.get("type") == "cdk:asset-manifest":
            continue
        name = other.get("properties", {}).get("stackName", dependency)
        if other.get("type") != "aws:cloudformation:stack":
            raise Refused(f"{stack_name} would deploy {dependency} along with it")
        other_account, other_region = _environment(other)
        if (other_account, name) != (account, f"{stack_name}-support-{other_region}") or other_region == region:
            raise Refused(f"{stack_name} would deploy {dependency} along with it")
        if [d for d in other.get("dependencies", []) if artifacts.get(d, {}).get("type") != "cdk:asset-manifest"]:
            raise Refused(f"{name} would deploy other stacks along with it")
        stacks[name] = (other_region, json.loads(zipped.read(other["properties"]["templateFile"])))
    return stacks


def _environment(artifact: dict) -> tuple[str, str]:
    """(account, region) of a stack artifact (`aws://<account>/<region>`)."""
    account, _, region = artifact.get("environment", "").removeprefix("aws://").partition("/")
    return account, region


def _new_stacks(job_data: dict) -> dict[str, tuple[str, dict]]:
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
            return _stacks_to_deploy(zipped)


def _deployed_template(cloudformation, stack_name: str) -> dict | None:
    try:
        body = cloudformation.get_template(StackName=stack_name, TemplateStage="Original")["TemplateBody"]
    except cloudformation.exceptions.ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return json.loads(body) if isinstance(body, str) else body


def _known_support_stacks() -> set[tuple[str, str]]:
    """(name, region) of the support stacks the deployed release has (SUPPORT_STACKS: `name@region,...`): the guard
    may read their templates; a support stack the release adds is new, shown as a widening."""
    return {tuple(item.split("@", 1)) for item in os.environ.get("SUPPORT_STACKS", "").split(",") if item}


def _allowance(ssm):
    """The reason a person put for exactly this widening (SSM parameter named by its fingerprint), or None."""
    def allowed(fingerprint: str) -> str | None:
        try:
            value = ssm.get_parameter(Name=f"{os.environ['ALLOWANCE_PATH']}{fingerprint}")["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            return None
        return value if len(value.strip()) >= MIN_REASON else None

    return allowed


def handler(event, _context, codepipeline=None, cloudformation=None, ssm=None, cloudformation_in=None):
    """`cloudformation_in(region)`: a CloudFormation client of a support stack's region."""
    job_id = event["CodePipeline.job"]["id"]
    codepipeline = codepipeline or boto3.client("codepipeline")
    cloudformation = cloudformation or boto3.client("cloudformation")
    cloudformation_in = cloudformation_in or (lambda region: boto3.client("cloudformation", region_name=region))
    ssm = ssm or boto3.client("ssm")
    try:
        stacks = _new_stacks(_job_data(codepipeline, job_id))
        stack_name = os.environ["STACK_NAME"]
        known = _known_support_stacks()
        support = {name: (_deployed_template(cloudformation_in(region), name) if (name, region) in known else None, template)
                   for name, (region, template) in stacks.items() if name != stack_name}
        passed, message = widening.decide(
            _deployed_template(cloudformation, stack_name), stacks[stack_name][1],
            tuple(filter(None, os.environ.get("GUARD_LOGICAL_IDS", "").split(","))), _allowance(ssm), support)
    except Exception as error:  # cannot decide: closed
        passed, message = False, f"the pipeline guard could not decide: {type(error).__name__}: {error}"
    print(message)
    if passed:
        codepipeline.put_job_success_result(jobId=job_id)
    else:
        codepipeline.put_job_failure_result(jobId=job_id, failureDetails={
            "type": "JobFailed", "message": message[:MESSAGE_LIMIT]})
    return {"passed": passed}
