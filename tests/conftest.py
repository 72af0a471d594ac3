"""Shared fixtures: a fault-injecting fake API on 127.0.0.1, and an isolated environment.

No test ever reaches the network: every base URL points at the mock server on the loopback
interface, and proxy variables are cleared so that nothing is routed elsewhere by accident.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from batchpizza.mock.faults import MockConfig
from batchpizza.mock.server import ThreadedMockServer

if TYPE_CHECKING:
    from tests.batchapi_shared import ModelAOut

# -- Ray's tests: only with the ray extra -------------------------------------------------------

# `ray` marks the tests that need Ray (pip install -e '.[test,ray]'). Without it they are
# deselected, and the run says so; CI sets BATCHPIZZA_REQUIRE_RAY=1 (.ci/run), and then a run
# without Ray, or one in which no Ray test passed, fails.
REQUIRE_RAY = "BATCHPIZZA_REQUIRE_RAY"


def ray_installed() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except ValueError:  # a module named ray without a spec: not Ray
        return False


_ray_tests = {"deselected": 0, "passed": 0}
REQUIRE_LITELLM = "BATCHPIZZA_REQUIRE_LITELLM"


# Read once, at import: the autouse _isolated_env clears every BATCHPIZZA_ variable for a test.
_LITELLM = os.environ.get("BATCHPIZZA_LITELLM") or shutil.which("litellm")


def litellm_command() -> str | None:
    """The LiteLLM proxy's command: BATCHPIZZA_LITELLM, else `litellm` on PATH."""
    return _LITELLM


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(REQUIRE_RAY) and not ray_installed():
        raise pytest.UsageError(
            f"{REQUIRE_RAY} is set and Ray is not installed: pip install -e '.[test,ray]'"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `litellm` marks the tests against a LiteLLM proxy (pip install 'litellm[proxy]', which pins
    # older polars and huggingface-hub than the test extra's, so it is no extra of ours: .ci/run
    # installs it in a virtual environment of its own and names its command in BATCHPIZZA_LITELLM).
    if litellm_command() is None:
        if os.environ.get(REQUIRE_LITELLM):
            raise pytest.UsageError(
                f"{REQUIRE_LITELLM} is set and no LiteLLM proxy was found: set BATCHPIZZA_LITELLM "
                "to its `litellm` command, or pip install 'litellm[proxy]'"
            )
        needs = [item for item in items if item.get_closest_marker("litellm") is not None]
        if needs:
            config.hook.pytest_deselected(items=needs)
            items[:] = [item for item in items if item.get_closest_marker("litellm") is None]
    if ray_installed():
        return
    needs_ray = [item for item in items if item.get_closest_marker("ray") is not None]
    if needs_ray:
        config.hook.pytest_deselected(items=needs_ray)
        items[:] = [item for item in items if item.get_closest_marker("ray") is None]
        _ray_tests["deselected"] = len(needs_ray)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and "ray" in report.keywords:
        _ray_tests["passed"] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _ray_tests["deselected"]:
        terminalreporter.write_line(
            f"{_ray_tests['deselected']} tests need Ray and were deselected: Ray is not "
            "installed (pip install -e '.[test,ray]' to run them; CI does)",
            yellow=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(REQUIRE_RAY) and _ray_tests["passed"] == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        sys.stderr.write(f"{REQUIRE_RAY} is set and no Ray test passed: Ray's tests did not run\n")


# Hypothesis: a small profile for local runs, the full one in CI (CI=true is set there).
settings.register_profile("dev", max_examples=30)
settings.register_profile("ci", max_examples=300)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
FULL_FUZZ = bool(os.environ.get("CI"))


def examples(n: int) -> int:
    """`n` examples in CI, a tenth of them locally, so the default run stays fast."""
    return n if FULL_FUZZ else max(10, n // 10)


REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BATCHPIZZA_PROXY",
        "BATCHPIZZA_BASE_URL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    # Every run option reads BATCHPIZZA_<OPTION>: a variable set in the shell that runs the tests
    # would change every run (BATCHPIZZA_LOOP, the event loop, is not an option).
    for name in list(os.environ):
        if name.startswith("BATCHPIZZA_") and name != "BATCHPIZZA_LOOP":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def _server() -> Iterator[ThreadedMockServer]:
    with ThreadedMockServer(MockConfig(seed=1)) as server:
        yield server


class MockProcess:
    """The mock server in a process of its own, as a real service would be: for runs in other
    processes (a command in a subprocess, Ray's actors), which cannot reach a thread of ours."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batchpizza", "mock-server", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().split()[-1]  # "... listening on URL"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/__stats") as reply:
            stats: dict[str, Any] = json.load(reply)
            return stats

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def mock_process() -> Iterator[Callable[..., MockProcess]]:
    """Start the mock server in its own process, with these options; stopped after the test."""
    servers: list[MockProcess] = []

    def start(*args: str) -> MockProcess:
        servers.append(MockProcess(*args))
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def mock_api(_server: ThreadedMockServer) -> Iterator[ThreadedMockServer]:
    """The fake API, reset to a well-behaved server; tests may set `.config` to inject faults."""
    _server.config = MockConfig(seed=1)
    _server.reset()
    yield _server
    _server.config = MockConfig(seed=1)
    _server.reset()


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    # Split on "\n" only: str.splitlines would also split on U+0085 and U+2028 inside strings.
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


# Options that make a test run fast and deterministic against the local server.
FAST = {
    "rate": 0,
    "backoff_base": 0.001,
    "backoff_cap": 0.01,
    "misuse_backoff": 0.001,
    "retry_after_cap": 0.05,
    "timeout": 2.0,
    "progress": False,
    "quiet": True,
}


# Runs the CLI as `python -m batchpizza` would, with a file size limit the child sets itself (no
# preexec_fn in a threaded parent): `python -c LIMITED_CLI BYTES run ...`. Python ignores SIGXFSZ,
# so a write past the limit fails with EFBIG ("File too large"), as a full disk fails with ENOSPC.
LIMITED_CLI = (
    "import resource, runpy, sys\n"
    "limit = int(sys.argv.pop(1))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "sys.argv[0] = 'batchpizza'\n"
    "runpy.run_module('batchpizza', run_name='__main__', alter_sys=True)\n"
)


def other_network_namespace() -> list[str]:
    """The command prefix that runs a process in a network namespace of its own, as a second
    container or pod sharing the volume does. Checked, never skipped: a test that cannot make one
    proves nothing, and says so."""
    here = Path("/proc/self/ns/net").readlink()
    probe = subprocess.run(
        ["unshare", "--net", "readlink", "/proc/self/ns/net"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        pytest.fail(f"cannot make a network namespace (unshare --net): {probe.stderr.strip()}")
    assert probe.stdout.strip() != str(here), "unshare --net did not give another namespace"
    return ["unshare", "--net"]


# -- processes a test starts and must reap ------------------------------------------------------


class Proc:
    """A subprocess whose stderr is collected line by line by a thread, readable while it runs."""

    def __init__(self, args: list[str], cwd: Path, stdin: int) -> None:
        self.popen = subprocess.Popen(
            args, cwd=cwd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line.decode("utf-8", "replace"))

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(5)
        return code

    def cleanup(self) -> None:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self._reader.join(5)
        if self.popen.stderr is not None:
            self.popen.stderr.close()


Spawn = Callable[..., Proc]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start subprocesses; teardown kills and reaps every one of them."""
    procs: list[Proc] = []

    def start(args: list[str], *, stdin: int = subprocess.DEVNULL) -> Proc:
        proc = Proc(args, tmp_path, stdin)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.cleanup()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedMockServer]:
    """The mock for the Batch API tests: its batches done in 0.2 s, small request files."""
    from tests.batchapi_shared import KEY, LIMITS

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", LIMITS)
    with ThreadedMockServer() as srv:
        srv.batches.seconds = 0.2
        yield srv


@pytest.fixture
def model_a_out(server: ThreadedMockServer, tmp_path: Path) -> Callable[..., ModelAOut]:
    """`model_a_out(n, *extra)`: n rows, and model a's --via batch run over them (with `extra`
    options) having submitted every row and exited 4 with its batches out, which then finished
    at the server (they complete at the next poll)."""
    from tests.batchapi_shared import Job, ModelAOut

    def make(n: int, *extra: str) -> ModelAOut:
        job = Job.of(server, tmp_path, n)
        server.batches.seconds = 3600.0
        first = job.run("--via", "batch", "--model", "a", *extra)
        assert first.returncode == 4, first.stderr
        theirs = frozenset(server.batches.batches)
        for batch in server.batches.batches.values():
            batch["_started"] -= 3600.0  # they complete at the next poll
        server.batches.seconds = 0.2
        return ModelAOut(server, job.inp, job.out, theirs)

    return make
