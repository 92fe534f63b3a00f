"""Hash-pinned locks of what the pipeline installs from PyPI, so that no step installs a file nobody checked.

A version pin does not pin content: PyPI lets a release gain files after it is published (a new wheel). A lock lists,
for each release the installs resolve to, the sha256 of every file PyPI had for it when the lock was written; pip in
hash-checking mode (`--require-hashes`) then installs only a file whose hash is listed, for any platform PyPI built.

- `requirements.lock`: the Synth step's runtime (`make synth` installs it; the closure of requirements.txt).
- `buildspecs/locks/boto3.txt`: what the Review and Smoke steps install (boto3; the Review step reads what replaces a
  resource from pipeline/create-only.json, not from cfn-lint).

`make lock` (or `python -m pipeline.locks`, with a Python that has pip) writes them after a pin changes in
constraints.txt. It needs PyPI: pip resolves each lock for this machine's Python and for CodeBuild's (3.12, x86_64
Linux), and PyPI's JSON API gives the files' hashes. `read_lock` reads one back (the tests compare every lock with
constraints.txt, offline).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
CODEBUILD_PYTHON = "3.12"  # runtime-versions in buildspecs/*.yml
# lock file -> what it installs (pip requirement arguments, relative to the repository)
LOCKS: dict[str, tuple[str, ...]] = {
    "requirements.lock": ("-r", "requirements.txt"),
    "buildspecs/locks/boto3.txt": ("boto3",),
}
PYPI_JSON = "https://pypi.org/pypi/{name}/json"  # every release's files and their digests
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")
_HASH = re.compile(r"--hash=sha256:(?P<digest>[0-9a-f]{64})")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Locked:
    name: str
    version: str
    hashes: tuple[str, ...]


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements or constraints file, by canonical name."""
    pins = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[canonical(match["name"])] = match["version"]
    return pins


def read_lock(path: Path) -> dict[str, Locked]:
    """A lock's entries by canonical name (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    found = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[canonical(match["name"])] = Locked(match["name"], match["version"], tuple(_HASH.findall(line)))
    return found


def _resolve(requirements: tuple[str, ...], *platform: str) -> dict[str, str]:
    """What pip installs for `requirements` under constraints.txt (this Python, or `platform`'s options)."""
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "report.json"
        target = ["--target", str(Path(work) / "target")] if platform else []
        subprocess.run(  # noqa: S603 - pip, with this module's own arguments
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
             *target, *platform, "-c", str(CONSTRAINTS), *requirements],
            cwd=ROOT, check=True,
        )
        installs = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def _file_hashes(name: str, version: str) -> tuple[str, ...]:
    with urllib.request.urlopen(PYPI_JSON.format(name=name), timeout=60) as response:  # noqa: S310 - a constant https URL
        files = json.load(response)["releases"].get(version) or []
    if not files:
        raise SystemExit(f"PyPI lists no file of {name}=={version}")
    return tuple(sorted({f["digests"]["sha256"] for f in files}))


def write_lock(path: Path, requirements: tuple[str, ...]) -> int:
    codebuild = ("--python-version", CODEBUILD_PYTHON, "--platform", "manylinux2014_x86_64", "--implementation", "cp",
                 "--only-binary=:all:")
    pins = {**_resolve(requirements), **_resolve(requirements, *codebuild)}
    constrained = read_pins(CONSTRAINTS)
    unpinned = sorted(f"{name}=={version}" for name, version in pins.items() if constrained.get(name) != version)
    if unpinned:
        raise SystemExit(f"{path}: not pinned so in constraints.txt: {', '.join(unpinned)}; pin them there first")
    lines = [
        f"# Hash-pinned: {' '.join(requirements)}, under constraints.txt, for Python {sys.version_info[0]}."
        f"{sys.version_info[1]} and CodeBuild's {CODEBUILD_PYTHON}.",
        "# Written by `make lock` (pipeline/locks.py): every file PyPI had for each release. Do not edit by hand.",
    ]
    for name in sorted(pins):
        hashes = _file_hashes(name, pins[name])
        lines.append(f"{name}=={pins[name]} \\")
        continued = [" \\"] * (len(hashes) - 1) + [""]
        lines += [f"    --hash=sha256:{digest}{more}" for digest, more in zip(hashes, continued, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return len(pins)


def main() -> int:
    for relative, requirements in LOCKS.items():
        path = ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"{relative}: {write_lock(path, requirements)} releases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
