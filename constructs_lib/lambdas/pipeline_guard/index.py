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

import hashlib
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


# What a CDK cross-region support stack's manifest entry may hold: deployed from its template file (no template
# asset, no parameters) with the pipeline stack's own roles.
SUPPORT_PROPERTIES = frozenset({"templateFile", "terminationProtection", "validateOnSynth", "assumeRoleArn",
                                "cloudFormationExecutionRoleArn", "stackName"})


def _stacks_to_deploy(zipped: zipfile.ZipFile) -> dict[str, tuple[str, dict]]:
    """{stack name: (region, template)}: the stack `cdk deploy <stack>` would deploy from this assembly, first, and the
    CDK cross-region support stacks it deploys along with it (`<stack>-support-<region>`, in the pipeline's account:
    an environment in another region than the pipeline's). Anything else deployed along with it is refused, and so is
    an assembly in which what would be deployed is not the template compared: the CLI selects the stack by its
    artifact id and deploys the template asset it publishes (`stackTemplateAssetObjectUrl`), which must be the
    template file itself."""
    manifest = json.loads(zipped.read("manifest.json"))
    artifacts = manifest.get("artifacts", {})
    stack_name = os.environ["STACK_NAME"]
    named = [(artifact_id, a) for artifact_id, a in artifacts.items() if a.get("type") == "aws:cloudformation:stack"
             and stack_name in (artifact_id, a.get("displayName"), a.get("properties", {}).get("stackName", artifact_id))]
    if len(named) != 1 or named[0][0] != stack_name or named[0][1].get("properties", {}).get("stackName", stack_name) != stack_name:
        raise Refused(f"the assembly holds {len(named)} stacks that `cdk deploy {stack_name}` could mean, or one "
                      "whose id and name differ")
    artifact_id, artifact = named[0]
    properties = artifact["properties"]
    template_file = properties.get("templateFile")
    if template_file != os.environ["TEMPLATE_FILE"]:
        raise Refused(f"{stack_name} would deploy {template_file!r}, not {os.environ['TEMPLATE_FILE']}")
    body = zipped.read(template_file)
    _template_asset_is_the_file(zipped, artifacts, artifact, template_file, body)
    account, region = _environment(artifact)
    stacks = {stack_name: (region, json.loads(body))}
    seen: set[tuple[str, str]] = set()
    for dependency in artifact.get("dependencies", []):
        other = artifacts.get(dependency, {})
        if other.get("type") == "cdk:asset-manifest":
            continue
        other_properties = other.get("properties", {})
        name = other_properties.get("stackName", dependency)
        if other.get("type") != "aws:cloudformation:stack":
            raise Refused(f"{stack_name} would deploy {dependency} along with it")
        other_account, other_region = _environment(other)
        if (other_account, name) != (account, f"{stack_name}-support-{other_region}") or other_region == region:
            raise Refused(f"{stack_name} would deploy {dependency} along with it")
        if (name, other_region) in seen:
            raise Refused(f"{stack_name} would deploy {name} twice")
        seen.add((name, other_region))
        if other.get("dependencies"):
            raise Refused(f"{name} would deploy something along with it")
        unexpected = sorted(set(other_properties) - SUPPORT_PROPERTIES) + [
            key for key in ("assumeRoleArn", "cloudFormationExecutionRoleArn") if other_properties.get(key) != properties.get(key)]
        if unexpected:
            raise Refused(f"{name} is not deployed as a CDK support stack is: {', '.join(unexpected)}")
        stacks[name] = (other_region, json.loads(zipped.read(other_properties["templateFile"])))
    return stacks


def _template_asset_is_the_file(zipped: zipfile.ZipFile, artifacts: dict, artifact: dict, template_file: str,
                                body: bytes) -> None:
    """The object `cdk deploy` deploys (stackTemplateAssetObjectUrl) is published from `template_file` and from
    nothing else: its key is the file's sha256, the stack's asset manifest publishes that file (packaging `file`)
    under that key, and no other asset writes it."""
    url = artifact["properties"].get("stackTemplateAssetObjectUrl")
    if url is None:
        return
    digest = hashlib.sha256(body).hexdigest()
    key = url.rsplit("/", 1)[-1]
    if key != f"{digest}.json":
        raise Refused(f"the deployed template object ({key}) is not the template file's (sha256 {digest})")
    ids = dict.fromkeys(artifact.get("dependencies", []) + artifact["properties"].get("additionalDependencies", []))
    manifests = [artifacts[d] for d in ids if artifacts.get(d, {}).get("type") == "cdk:asset-manifest"]
    writers = []
    for manifest in manifests:
        files = json.loads(zipped.read(manifest["properties"]["file"])).get("files", {})
        for asset_id, asset in files.items():
            keys = {d.get("objectKey") for d in asset.get("destinations", {}).values()}
            if key in keys:
                writers.append((asset_id, asset.get("source", {})))
    if writers != [(digest, {"path": template_file, "packaging": "file"})]:
        raise Refused(f"the deployed template object {key} is not published from {template_file} alone: {writers}")


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
