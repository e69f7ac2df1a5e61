"""The warm process (core/warm.py), with real forks: a server started from one copy of the project
(`root`) runs stages from another (`copy`, the experiment's temporary copy, whose code differs), and
everything a DVC stage relies on passes through: stdin, stdout, stderr, exit status, signals, kill -9.
The server imports only `json` and `envsetter` (which sets a variable as Ultralytics' import does) here:
what it imports does not change how it forks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT, project_env
from yolo_mlops.core import warm

MODULES = {
    "probe": """
import json, os, sys
import yolo_mlops.core.warm
VERSION = "root"
print(json.dumps({"version": VERSION, "cwd": os.getcwd(), "argv": sys.argv, "ppid": os.getppid(),
                  "warm": yolo_mlops.core.warm.__file__, "stdin": sys.stdin.readline()}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
""",
    "sleeper": """
import os, sys, time
from pathlib import Path
Path(sys.argv[1] + ".tmp").write_text(f"{os.getpid()} {os.getppid()}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
try:
    time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    if sys.argv[2] == "catch":
        sys.exit(3)
    raise
""",
    "raiser": """
def fail():
    raise ValueError("boom")
fail()
""",
    "leak": """
import json, os
print(json.dumps({"FOO": os.environ.get("FOO"), "LEAK": os.environ.get("LEAK"), "leaked": hasattr(json, "leaked"),
                  "ppid": os.getppid()}))
os.environ["LEAK"] = "1"
json.leaked = True
""",
}
TIMEOUT_S = 30


def make_copy(destination: Path, version: str) -> Path:
    """The project's code with the test modules in stages/ (and one in yolo_mlops/tracking/)."""
    shutil.copytree(PROJECT_ROOT / "yolo_mlops", destination / "yolo_mlops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (destination / "stages").mkdir()
    shutil.copy2(PROJECT_ROOT / "stages" / "__init__.py", destination / "stages" / "__init__.py")
    for name, source in MODULES.items():
        (destination / "stages" / f"{name}.py").write_text(source.replace('"root"', f'"{version}"'))
    probe = MODULES["probe"].replace('"root"', f'"{version}"')
    (destination / "yolo_mlops" / "tracking" / "probe.py").write_text(probe)
    return destination


PRELOAD = ("json", "envsetter")


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path]:
    root = make_copy(tmp_path / "root", "root")
    (root / "envsetter.py").write_text("import os\nos.environ['OMP_NUM_THREADS'] = '1'\n")
    return root, make_copy(tmp_path / "copy", "copy")


@pytest.fixture
def server(copies: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[warm.Server]:
    wanted = project_env()  # the clients' environment, as the server's
    for name in set(os.environ) - set(wanted):
        monkeypatch.delenv(name)
    for name, value in wanted.items():
        monkeypatch.setenv(name, value)
    with warm.serving(copies[0], preload=PRELOAD) as started:
        assert started is not None and started.pid is not None
        yield started


def run(module: str, cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> Any:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env or dict(os.environ),
                          input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S)


def cold_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != warm.ADDRESS_VARIABLE}


def start_sleeper(copy: Path, ready: Path, mode: str = "raise") -> tuple[subprocess.Popen, int, int]:
    """A client running stages.sleeper, and its child's pid and parent pid once the child runs."""
    client = subprocess.Popen([sys.executable, "-m", "stages.sleeper", str(ready), mode], cwd=copy,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not ready.exists():
        assert time.monotonic() < deadline and client.poll() is None, client.communicate()
        time.sleep(0.02)
    pid, ppid = map(int, ready.read_text().split())
    return client, pid, ppid


def gone(pid: int) -> bool:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_the_child_runs_the_experiments_own_code_from_its_copy(server, copies):
    copy = copies[1]
    result = run("stages.probe", copy, "0", stdin="line\n")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[0])
    assert seen["ppid"] == server.pid  # forked from the warm process
    assert seen["version"] == "copy" and seen["cwd"] == str(copy)
    assert seen["warm"] == str(copy / "yolo_mlops" / "core" / "warm.py")
    assert seen["argv"] == [str(copy / "stages" / "probe.py"), "0"]
    forks = server.forks()
    assert len(forks) == 1 and f"stages.probe 0 cwd={copy}" in forks[0]


def test_stdin_stdout_stderr_and_exit_code_pass_through_unchanged(server, copies):
    copy = copies[1]
    warm_result = run("stages.probe", copy, "7", stdin="hello\n")
    cold_result = run("stages.probe", copy, "7", stdin="hello\n", env=cold_env())
    assert warm_result.returncode == cold_result.returncode == 7
    assert warm_result.stderr == cold_result.stderr == "to stderr\n"
    warm_seen, cold_seen = json.loads(warm_result.stdout), json.loads(cold_result.stdout)
    assert warm_seen.pop("ppid") == server.pid and cold_seen.pop("ppid") == os.getpid()
    assert warm_seen == cold_seen and warm_seen["stdin"] == "hello\n"
    assert len(server.forks()) == 1


def test_a_forwarder_of_the_tracking_package_is_forked_too(server, copies):
    result = run("yolo_mlops.tracking.probe", copies[1], "0")
    assert json.loads(result.stdout)["ppid"] == server.pid
    assert "yolo_mlops.tracking.probe" in server.forks()[0]


def test_a_stage_that_raises_prints_the_same_traceback_and_status_as_cold(server, copies):
    copy = copies[1]
    warm_result, cold_result = run("stages.raiser", copy), run("stages.raiser", copy, env=cold_env())
    assert warm_result.returncode == cold_result.returncode == 1
    cold_lines = [line for line in cold_result.stderr.splitlines() if "<frozen runpy>" not in line]
    assert warm_result.stderr.splitlines() == cold_lines
    assert warm_result.stderr.endswith("ValueError: boom\n") and "warm.py" not in warm_result.stderr
    assert len(server.forks()) == 1


@pytest.mark.parametrize(("signum", "mode", "status", "printed"), [
    (signal.SIGINT, "catch", 3, "interrupted\n"),  # the stage's own handler of Ctrl-C
    (signal.SIGINT, "raise", -signal.SIGINT, "interrupted\n"),  # uncaught: ends by SIGINT, as Python does
    (signal.SIGTERM, "raise", -signal.SIGTERM, ""),
])
def test_signals_reach_the_child_and_its_status_comes_back(server, copies, tmp_path, signum, mode, status, printed):
    client, pid, ppid = start_sleeper(copies[1], tmp_path / "ready", mode)
    assert ppid == server.pid
    client.send_signal(signum)
    out, err = client.communicate(timeout=TIMEOUT_S)
    assert client.returncode == status, err
    assert out == printed
    assert gone(pid)


def test_kill_9_of_the_client_ends_its_child(server, copies, tmp_path):
    client, pid, ppid = start_sleeper(copies[1], tmp_path / "ready")
    assert ppid == server.pid
    client.kill()
    client.wait(TIMEOUT_S)
    assert gone(pid)
    assert run("stages.probe", copies[1], "0").returncode == 0  # the server serves on


def test_the_warm_process_killed_mid_stage_fails_the_stage_clearly(server, copies, tmp_path):
    client, pid, _ = start_sleeper(copies[1], tmp_path / "ready")
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    err = client.communicate(timeout=TIMEOUT_S)[1]
    assert client.returncode == 1
    assert err.startswith("error: the warm process ended while stages.sleeper ran in it")
    assert gone(pid)  # the child ends with the server, not left writing the experiment's outputs


def test_without_a_server_the_stage_starts_cold(copies, tmp_path):
    env = project_env(**{warm.ADDRESS_VARIABLE: str(tmp_path / "missing" / warm.SOCKET_FILE)})
    result = run("stages.probe", copies[1], "5", env=env)
    assert result.returncode == 5 and result.stderr == "to stderr\n"
    assert json.loads(result.stdout)["ppid"] == os.getpid()


def test_a_client_with_another_environment_the_libraries_read_at_import_starts_cold(server, copies):
    result = run("stages.probe", copies[1], "0", env=dict(os.environ) | {"OMP_NUM_THREADS": "3"})
    assert result.returncode == 0
    assert json.loads(result.stdout)["ppid"] == os.getpid()
    assert "warm process: $OMP_NUM_THREADS differs" in result.stderr
    assert server.forks() == []


def test_what_the_imports_set_in_the_environment_is_the_childs_and_may_be_passed_on(server, copies):
    script = "import os, sys; print(os.environ.get('OMP_NUM_THREADS'), os.getppid()); sys.exit(0)"
    (copies[1] / "stages" / "threads.py").write_text(script)
    first = run("stages.threads", copies[1])  # as a stage that imported the libraries itself would see it
    passed_on = run("stages.threads", copies[1], env=dict(os.environ) | {"OMP_NUM_THREADS": "1"})  # its forwarder
    assert first.stdout == passed_on.stdout == f"1 {server.pid}\n"


def test_only_a_python_dash_m_entry_hands_over(server, copies):
    result = subprocess.run([sys.executable, "-c", "import stages, os; print(os.getppid())"], cwd=copies[1],
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.stdout == f"{os.getpid()}\n" and server.forks() == []


def test_nothing_leaks_from_one_experiment_to_the_next(server, copies):
    first = json.loads(run("stages.leak", copies[1], env=dict(os.environ) | {"FOO": "1"}).stdout)
    second = json.loads(run("stages.leak", copies[1]).stdout)
    assert first == {"FOO": "1", "LEAK": None, "leaked": False, "ppid": server.pid}
    assert second == {"FOO": None, "LEAK": None, "leaked": False, "ppid": server.pid}


def test_two_clients_at_once(server, copies, tmp_path):
    clients = [start_sleeper(copies[1], tmp_path / f"ready{index}", "catch") for index in range(2)]
    assert [ppid for _, _, ppid in clients] == [server.pid, server.pid]
    for client, _, _ in clients:
        client.send_signal(signal.SIGINT)
    assert [client.communicate(timeout=TIMEOUT_S)[0] for client, _, _ in clients] == ["interrupted\n"] * 2
    assert [client.returncode for client, _, _ in clients] == [3, 3]
    assert len(server.forks()) == 2


def test_switched_off_and_stopped(copies, monkeypatch):
    monkeypatch.setenv(warm.ADDRESS_VARIABLE, "")
    with warm.serving(copies[0], preload=("json",)) as off:
        assert off is None
    monkeypatch.delenv(warm.ADDRESS_VARIABLE)
    with warm.serving(copies[0], preload=("json",)) as started:
        assert started is not None and started.pid is not None
        address = os.environ[warm.ADDRESS_VARIABLE]
    assert warm.ADDRESS_VARIABLE not in os.environ and not Path(address).exists() and gone(started.pid)
