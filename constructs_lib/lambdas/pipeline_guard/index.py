"""The pipeline guard: a CodePipeline Lambda action between Synth and UpdatePipeline. It compares the pipeline template
the release synthesized (the Synth step's output artifact) with the pipeline stack deployed now, and fails the action
when the release widens what the pipeline may do (widening.py) and the template carries no allowance for exactly that
widening. Its code is the deployed release's, not the one under review: a commit cannot change the guard that checks
it. Any failure to decide fails the action (closed)."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import boto3
import widening

MESSAGE_LIMIT = 5000  # CodePipeline's failureDetails message


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
            return json.loads(zipped.read(os.environ["TEMPLATE_FILE"]))


def _deployed_template(cloudformation) -> dict | None:
    try:
        body = cloudformation.get_template(StackName=os.environ["STACK_NAME"], TemplateStage="Original")["TemplateBody"]
    except cloudformation.exceptions.ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return json.loads(body) if isinstance(body, str) else body


def handler(event, _context, codepipeline=None, cloudformation=None):
    job = event["CodePipeline.job"]
    codepipeline = codepipeline or boto3.client("codepipeline")
    cloudformation = cloudformation or boto3.client("cloudformation")
    try:
        new = _new_template(job["data"])
        passed, message = widening.decide(_deployed_template(cloudformation), new,
                                          tuple(filter(None, os.environ.get("GUARD_LOGICAL_IDS", "").split(","))))
    except Exception as error:  # cannot decide: closed
        passed, message = False, f"the pipeline guard could not decide: {type(error).__name__}: {error}"
    print(message)
    if passed:
        codepipeline.put_job_success_result(jobId=job["id"])
    else:
        codepipeline.put_job_failure_result(jobId=job["id"], failureDetails={
            "type": "JobFailed", "message": message[:MESSAGE_LIMIT]})
    return {"passed": passed}
