"""Answer a CloudFormation custom-resource request (shared by this project's Lambda handlers).

Copied next to each handler when its asset is built (constructs_lib/python_lambda.py).
"""

from __future__ import annotations

import json
import urllib.request


def send_response(event: dict, context, status: str, physical_id: str, reason: str = "", data: dict | None = None) -> None:
    """PUT the result to the request's pre-signed S3 URL. `NoEcho` keeps `data` out of CloudFormation's output."""
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason or f"See CloudWatch log stream {getattr(context, 'log_stream_name', '')}",
            "PhysicalResourceId": physical_id,
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "NoEcho": True,
            "Data": data or {},
        }
    ).encode()
    url = event["ResponseURL"]
    if not url.startswith("https://"):  # CloudFormation's pre-signed S3 URL
        raise ValueError("ResponseURL must be an https URL")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=body, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(body))}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - scheme checked above
        response.read()
