"""The real app plus one plain S3 bucket (no logging, SSE-S3, no versioning) planted in the pipeline stack, in
staging's Network stack and in production's Data stack: every compliance pack must name all three, and synth
must fail because nobody acknowledged them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from constructs_lib.jsii_kernel import limit_background_threads  # noqa: E402

limit_background_threads()  # as app.py does, before the first aws_cdk import

from aws_cdk import App, RemovalPolicy  # noqa: E402
from aws_cdk import aws_s3 as s3  # noqa: E402

from app import build_app  # noqa: E402
from stages import platform_stage  # noqa: E402


def plant(scope) -> None:
    s3.Bucket(scope, "PlantedBucket", enforce_ssl=True, removal_policy=RemovalPolicy.DESTROY)


# A Stage is synthesized as soon as the pipeline adds it: plant while it is being built.
build_stage = platform_stage.PlatformStage.__init__


def build_and_plant(self, *args, **kwargs) -> None:
    build_stage(self, *args, **kwargs)
    plant(self.network if self.stage_name == "Staging" else self.data)


platform_stage.PlatformStage.__init__ = build_and_plant
app = App()
plant(build_app(app))
app.synth()
