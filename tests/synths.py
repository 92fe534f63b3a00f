"""The test run's three real `cdk synth` runs, started in the background as soon as the tests are collected.

A synth is mostly one core of CPU for ~10 s. Started when the first test asks for it, it left that test's worker
waiting (and its core idle) for the whole synth; started at collection, it runs while the workers go through the
tests that need no assembly (servers, moto, PostgreSQL, the LiteLLM proxy), which spend much of their time waiting.
Whichever worker collects first starts each synth (an exclusive `.started` file); every worker reads the result.

cfn-lint over the app's templates (about 10 CPU-seconds) runs in the same job as soon as the assembly is written,
when the collected tests ask for it: the synths end together and free both cores at once, and a test module
waiting for its turn behind slower ones would leave them idle.

`python -m tests.synths NAME DIRECTORY [--lint]` is the background job: it runs one synth and writes `result.json`,
then `.done`, into DIRECTORY; with `--lint`, cfn-lint's runs then go to `lint.json`, then `.linted`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from config.loader import DEFAULT_CONFIG_PATH
from pipeline.synth_summary import iter_stacks
from tests.assembly import ROOT

THREE_ENVIRONMENTS = ROOT / "config" / "examples" / "three-environments.toml"
VARIANT_EMAIL = "platform-oncall@example.com"
VARIANT_SECRET_VERSION = "0b7e6f3c-1d2a-4c5b-9e8f-7a6b5c4d3e2f"
VARIANT_COPY_VAULT = "arn:aws:backup:us-east-1:555555555555:backup-vault:coder-staging-copies"
VARIANT_SNAPSHOT = "coder-staging-postgres-final-terraform"

# The fixture that reads each synth's assembly, and the synth's name (its directory under the run's directory).
FIXTURES = {"assembly": "cdk", "three_environments": "three", "variant": "variant", "cfn_lint": "cdk"}
LINT_FIXTURE = "cfn_lint"  # cfn-lint's runs over that synth's templates
TIMEOUT_SECONDS = 600


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(ROOT / "node_modules" / ".bin"), str(ROOT / ".venv" / "bin"), env["PATH"]])
    return env


def _command(name: str, directory: Path) -> list[str]:
    outdir = str(directory / "cdk.out")
    if name == "cdk":  # exactly what `make synth` runs
        return ["cdk", "synth", "--quiet", "--output", outdir]
    if name == "three":  # the committed example, as the README says
        return ["cdk", "synth", "--quiet", "--output", outdir, "-c", f"config={THREE_ENVIRONMENTS}"]
    if name == "variant":
        # The app plus unacknowledged buckets (tests/apps/planted_finding.py), which must fail synth, with a config
        # variant: a notification e-mail, a pinned OIDC secret version, a backup copy vault, the removal of ClickHouse's
        # old data and a database restored from a snapshot (taking over Terraform's) in staging.
        # Staging also removes the old copy of ClickHouse's data.
        text = DEFAULT_CONFIG_PATH.read_text()
        for old, new in (('notification_email = ""', VARIANT_EMAIL), ('client_secret_version = ""', VARIANT_SECRET_VERSION),
                         ('copy_vault_arn = ""', VARIANT_COPY_VAULT), ('old_clickhouse_data = "copy"', "remove"),
                         ('snapshot_identifier = ""', VARIANT_SNAPSHOT)):
            changed = old.replace(old[old.index('"'):], f'"{new}"')
            text = text.replace(old, changed, 1)
            if text.count(changed) != 1:
                raise RuntimeError(f"the variant could not set {changed!r}: {DEFAULT_CONFIG_PATH} changed shape")
        (directory / "variant.toml").write_text(text)
        return ["cdk", "synth", "--quiet", "--app", f"{sys.executable} -O tests/apps/planted_finding.py",
                "-c", f"config={directory / 'variant.toml'}", "--output", outdir]
    raise ValueError(f"unknown synth {name!r}")


def run(name: str, directory: Path, lint: bool = False) -> None:
    """The background job: one synth, its outcome in result.json, then .done; with `lint`, cfn-lint's runs over its
    templates in lint.json, then .linted."""
    try:
        args = _command(name, directory)
        result = subprocess.run(args, cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
        outcome = {"args": args, "returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
    except Exception as error:  # noqa: BLE001 - whatever went wrong, the waiting tests must see it, not time out
        outcome = {"args": [name], "returncode": -1, "stdout": "", "stderr": f"{type(error).__name__}: {error}"}
    (directory / "result.json").write_text(json.dumps(outcome))
    (directory / ".done").write_text("")
    if not lint:
        return
    if outcome["returncode"] != 0:
        linted = {"error": f"synth {name} failed: no templates to lint"}
    else:
        try:
            linted = {"runs": cfn_lint(directory / "cdk.out")}
        except Exception as error:  # noqa: BLE001 - as above
            linted = {"error": f"{type(error).__name__}: {error}"}
    (directory / "lint.json").write_text(json.dumps(linted))
    (directory / ".linted").write_text("")


def cfn_lint(assembly: Path) -> list[dict]:
    """cfn-lint (with .cfnlintrc.yaml) on every template of the assembly, one process per core, each on its share:
    [{"templates": [...], "returncode": N, "output": "..."}] per process."""
    templates = sorted(str(stack.template) for stack in iter_stacks(assembly))
    cores = os.cpu_count() or 1
    shares = [templates[i::cores] for i in range(min(cores, len(templates)))]
    processes = [
        subprocess.Popen(["cfn-lint", "--config-file", str(ROOT / ".cfnlintrc.yaml"), "--", *share], cwd=ROOT,
                         env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for share in shares
    ]
    try:
        outputs = [process.communicate(timeout=TIMEOUT_SECONDS)[0] for process in processes]
    finally:
        for process in processes:  # none left behind when one timed out
            if process.poll() is None:
                process.kill()
                process.wait()
    return [{"templates": share, "returncode": process.returncode, "output": output}
            for share, process, output in zip(shares, processes, outputs, strict=True)]


class Synths:
    """The synths of one test run, under the run's directory (shared by its xdist workers)."""

    def __init__(self, run_directory: Path) -> None:
        self.root = run_directory
        self.started: list[subprocess.Popen] = []

    def directory(self, name: str) -> Path:
        return self.root / f"synth-{name}"

    def start(self, name: str, lint: bool = False) -> None:
        """Start the synth (and cfn-lint after it, with `lint`) unless another worker already did."""
        directory = self.directory(name)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(directory / ".started", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        log = open(directory / "job.log", "w")  # noqa: SIM115 - the job's own output, kept for a failed run
        # A session of its own: an interrupted run stops the job, the CLI and the app together.
        job = [sys.executable, "-m", "tests.synths", name, str(directory), *(["--lint"] if lint else [])]
        process = subprocess.Popen(job, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=tool_env(), start_new_session=True)
        log.close()
        self.started.append(process)
        (directory / ".started").write_text(str(process.pid))  # for the other workers: is the job still alive?

    def result(self, name: str) -> subprocess.CompletedProcess:
        """Wait for the synth (starting it if nobody has) and return how the CLI ended."""
        self.start(name)
        outcome = json.loads(self._wait(name, ".done", "result.json", TIMEOUT_SECONDS + 60).read_text())
        return subprocess.CompletedProcess(outcome["args"], outcome["returncode"], outcome["stdout"], outcome["stderr"])

    def lint_runs(self, name: str) -> list[dict]:
        """Wait for cfn-lint over the synth's templates (starting both if nobody has) and return its runs."""
        self.start(name, lint=True)
        linted = json.loads(self._wait(name, ".linted", "lint.json", 2 * TIMEOUT_SECONDS + 60).read_text())
        if "error" in linted:
            raise AssertionError(f"cfn-lint did not run: {linted['error']}")
        return linted["runs"]

    def _wait(self, name: str, marker: str, output: str, seconds: float) -> Path:
        """Wait until the job writes `marker` (after `output`); fail at once if it ended without, or after `seconds`."""
        directory = self.directory(name)
        deadline = time.monotonic() + seconds
        while not (directory / marker).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"synth {name} did not finish; see {directory / 'job.log'}")
            if not _alive(directory / ".started") and not (directory / marker).exists():  # killed before it wrote it
                raise RuntimeError(f"synth {name}'s job ended without {output}:\n{(directory / 'job.log').read_text()[-3000:]}")
            time.sleep(0.1)
        return directory / output

    def assembly_directory(self, name: str) -> Path:
        """The cloud assembly of a synth that must pass (an open compliance finding fails it)."""
        result = self.result(name)
        if result.returncode != 0:
            raise AssertionError(f"cdk synth failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-5000:]}")
        return self.directory(name) / "cdk.out"

    def finish(self, interrupted: bool) -> None:
        """End of this worker's session: other workers may still need the synths it started, so wait for them; an
        interrupted run stops them instead."""
        for process in self.started:
            if interrupted and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=2 * TIMEOUT_SECONDS + 60)


def _alive(started: Path) -> bool:
    """Whether the job whose pid `.started` holds is still running (not gone, not a zombie awaiting its parent)."""
    pid = started.read_text().strip()
    if not pid:
        return True  # being started
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # no /proc here: rely on the timeout
    return state != "Z"


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]), lint=sys.argv[3:] == ["--lint"])
