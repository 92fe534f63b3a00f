"""The CDK's Node.js kernel (jsii): the process that builds every construct of the app and synthesizes it.

The kernel is a batch job of about ten seconds. Node gives V8 a pool of four background threads for garbage
collection and compiling; the kernel's work is mostly one thread of JavaScript and of CloudFormation's validator
(9 MB of WebAssembly, compiled at every synth), and on this project's 2-core machine the extra threads added CPU time
rather than speed: with one background thread a full synth takes 18 % less CPU and 6 % less time (README, "Speed").
Not measured on more cores (the pipeline's Synth step has 4 vCPUs).

The kernel starts when `aws_cdk` (or `constructs`) is first imported and reads the environment then: an entry point
calls `limit_background_threads()` before that import. This module imports neither.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

POOL_SIZE_OPTION = "--v8-pool-size"


def limit_background_threads(environ: MutableMapping[str, str] = os.environ) -> None:
    """Give the kernel one V8 background thread (`--v8-pool-size=1` in NODE_OPTIONS, which both of the kernel's Node
    processes read) unless NODE_OPTIONS already chooses a pool size; other Node options are kept."""
    options = environ.get("NODE_OPTIONS", "")
    if not any(option.split("=", 1)[0] == POOL_SIZE_OPTION for option in options.split()):
        environ["NODE_OPTIONS"] = f"{options} {POOL_SIZE_OPTION}=1".strip()
