"""The LiteLLM version the real-client test installs: the tag of the LiteLLM image in the config, one for every
environment (`python -m tests.litellm_version` prints it for the Makefile)."""

from __future__ import annotations

import sys

from config.loader import load_config
from tests.assembly import ROOT

CONSTRAINTS = ROOT / "tests" / "litellm" / "constraints.txt"


def image_version() -> str:
    tags = {environment.images.litellm.rsplit(":", 1)[1] for environment in load_config().environments}
    if len(tags) != 1:
        raise SystemExit(f"the environments run different LiteLLM images ({', '.join(sorted(tags))}): test one version")
    return tags.pop()


def pinned_version() -> str:
    (line,) = [line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("litellm==")]
    return line.removeprefix("litellm==")


if __name__ == "__main__":
    print(image_version())
    sys.exit(0)
