"""The warm process (docs/warm.md): a server that has imported the third-party libraries (torch,
torchvision, Ultralytics, MLflow) and holds no project code, no thread and no CUDA context. Each DVC
stage and each MLflow forwarder (`python -m stages.<name>`, `python -m yolo_mlops.tracking.forwarder`)
hands itself over to it (`hand_over`, at the top of their package) when $YOLO_MLOPS_WARM names its
socket: the server forks a child, which takes the client's stdin/stdout/stderr, argv, working folder
and environment and runs the same module from the client's own code (DVC's temporary copy). The client
stays, forwards its signals to the child, and exits with the child's status; when it dies (kill -9),
the server kills the child. Without the variable, or when the server refuses (another interpreter or
sys.path, an environment the libraries read at import), the process starts cold as before.

    python -m yolo_mlops.core.warm COMMAND...   runs COMMAND (`dvc repro`, say) with the warm process
"""

import atexit
import contextlib
import gc
import importlib
import io
import json
import os
import runpy
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from yolo_mlops.core.paths import ULTRALYTICS_CONFIG_DIR, WARM_DIR

ADDRESS_VARIABLE = "YOLO_MLOPS_WARM"  # the server's socket; set empty to switch the warm process off
# What the server imports once: the third-party libraries of the stages and forwarders, never project code.
PRELOAD = ("torch", "torchvision", "ultralytics", "ultralytics.models.yolo", "ultralytics.utils.plotting",
           "mlflow", "mlflow.tracking", "mlflow.pyfunc", "matplotlib.pyplot", "pandas", "yaml", "psutil")
PROJECT_PACKAGES = ("yolo_mlops", "stages")
# What the preloaded libraries read from the environment as they are imported: a client whose values
# differ starts cold. The variables in DEFAULTED are set by the project itself when unset (yolo/model.py).
IMPORT_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "PYTHONUSERBASE",
              "PYTHONWARNINGS", "PYTHONUTF8", "PYTHONDEVMODE", "PYTHONPLATLIBDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
              "LD_PRELOAD", "LANG", "LC_", "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "OMP_", "MKL_", "OPENBLAS_",
              "KMP_", "TORCH", "PYTORCH_", "YOLO_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MPL")
ULTRALYTICS_CONFIG_VARIABLE = "YOLO_CONFIG_DIR"
MODULE = "yolo_mlops.core.warm"  # this file, the server's entry point
SOCKET_FILE, FORKS_LOG, SERVER_LOG = "socket", "forks.log", "server.log"
READY = "imported"  # in its log once its imports are done
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
REPLY_TIMEOUT_S = 120.0  # the server answers once its imports are done
REQUEST_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
PARENT_POLL_S = 1.0
MAX_SOCKET_PATH = 100  # sockaddr_un holds 104-108 bytes
HEADER = struct.Struct("!I")
PR_SET_PDEATHSIG = 1


class Server(NamedTuple):
    """A running warm process: its pid (None when started by someone else) and its folder."""

    pid: int | None
    folder: Path

    def ready(self) -> bool:
        """Whether it has imported its libraries (clients that come earlier wait for it)."""
        log = self.folder / SERVER_LOG
        return log.exists() and READY in log.read_text()

    def forks(self) -> list[str]:
        """The processes forked so far, one line each: time, pid, module and args, working folder."""
        log = self.folder / FORKS_LOG
        return log.read_text().splitlines() if log.exists() else []


def summary(server: Server | None) -> str:
    """How the stages started: forked from the warm process, or each on its own (one line)."""
    off = f"{ADDRESS_VARIABLE}= switches it off"
    if server is None:
        return "every stage started on its own (no warm process: switched off, or no fork on this system)"
    forked = Counter(line.split()[2].rsplit(".", 1)[-1] for line in server.forks())
    if not forked:
        return (f"the warm process forked nothing, every stage started on its own (why: the stages' logs and "
                f"{server.folder / SERVER_LOG}; {off})")
    return f"forked from the warm process ({', '.join(f'{count} {name}' for name, count in forked.items())}; {off})"


# --- the client: a stage or forwarder process at its start ---

def hand_over(package: str) -> None:
    """Run this `python -m <package>.<module>` process in a child of the warm process, if one is set and
    accepts it: exits with the child's status. Returns (the process starts cold) otherwise."""
    address = os.environ.get(ADDRESS_VARIABLE)
    argv = sys.orig_argv
    if not address or sys.argv[:1] != ["-m"] or len(argv) < 3 or argv[1] != "-m" \
            or not argv[2].startswith(package + "."):
        return
    try:
        request = describe(argv[2])
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(REPLY_TIMEOUT_S)
        connection.connect(address)
        payload = json.dumps(request).encode()
        socket.send_fds(connection, [HEADER.pack(len(payload))], [0, 1, 2])
        connection.sendall(payload)
        reader = connection.makefile("rb")
        reply = json.loads(reader.readline() or b"{}")
    except (OSError, ValueError, AttributeError):
        return  # no server, or gone before it forked, or standard streams it cannot take: cold
    if "pid" not in reply:
        if "refused" in reply:
            print(f"warm process: {reply['refused']}; {argv[2]} starts without it", file=sys.stderr, flush=True)
        return
    follow(connection, reader, argv[2], reply["pid"])


def describe(module: str) -> dict[str, Any]:
    """What the child needs to be this process."""
    umask = os.umask(0)
    os.umask(umask)
    streams = [sys.stdin, sys.stdout, sys.stderr]
    if any(stream is None for stream in streams):
        raise ValueError("a standard stream is closed")
    return {
        "module": module, "argv": sys.argv[1:], "orig_argv": sys.orig_argv, "cwd": os.getcwd(),
        "env": dict(os.environ), "umask": umask, "identity": identity(), "path": sys.path,
        "ignored": [int(signum) for signum in FORWARDED if signal.getsignal(signum) == signal.SIG_IGN],
        "streams": [[stream.encoding, stream.errors, stream.line_buffering, stream.write_through]
                    for stream in streams],
    }


def identity() -> list[Any]:
    """The interpreter and where it imports from: a child forked from another one would import other code."""
    return [sys.executable, sys.prefix, sys.path[1:], list(sys.flags)]


def follow(connection: socket.socket, reader: io.BufferedReader, module: str, pid: int) -> None:
    """Forward this process's signals to the child until it ends, then exit with its status."""
    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"signal": signum}).encode() + b"\n")

    for signum in FORWARDED:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, forward)
    connection.settimeout(None)
    status = None
    with contextlib.suppress(OSError, ValueError):
        status = json.loads(reader.readline() or b"{}").get("exit")
    if status is None:
        print(f"error: the warm process ended while {module} ran in it (forked process {pid}); run again, "
              f"or set {ADDRESS_VARIABLE}= to run without it", file=sys.stderr, flush=True)
        os._exit(1)
    if status < 0:  # killed by a signal: so is this process
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status if status >= 0 else 128 - status)


# --- the server ---

class Warm:
    """The server's state: what it was started with, and its children with their clients' connections."""

    def __init__(self, folder: Path, defaulted: list[str]) -> None:
        self.folder, self.defaulted = folder, defaulted
        self.pid, self.parent, self.started, self.env = os.getpid(), os.getppid(), identity(), dict(os.environ)
        self.imported: dict[str, str] = {}  # what the imports set in the environment, as they would in a client
        self.children: dict[int, socket.socket] = {}
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(folder / SOCKET_FILE))
        self.listener.listen(64)  # clients wait here while the imports run
        self.wakeup, self.wakeup_write = socket.socketpair()

    def serve(self, preload: list[str]) -> None:
        """Import `preload`, then fork a child per request until SIGTERM or until the process that started
        this one ends."""
        for name in preload:
            importlib.import_module(name)
        forget_project_code()
        self.imported = {name: value for name, value in os.environ.items() if self.env.get(name) != value}
        print(f"warm process {self.pid}: {READY} {', '.join(preload)}; {threading.active_count()} thread(s)",
              flush=True)
        for end in (self.wakeup, self.wakeup_write):
            end.setblocking(False)
        signal.set_wakeup_fd(self.wakeup_write.fileno())
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # who started it stops it
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wakeup, selectors.EVENT_READ)
        gc.freeze()  # what the imports made stays shared with the children (copy-on-write)
        try:
            while os.getppid() == self.parent:
                for key, _ in self.selector.select(PARENT_POLL_S):
                    if key.fileobj is self.listener:
                        self.accept()
                    elif key.fileobj is self.wakeup:
                        with contextlib.suppress(OSError):
                            self.wakeup.recv(4096)
                    else:
                        self.from_client(key.fileobj, key.data)  # type: ignore[arg-type]
                self.reap()
        finally:
            for pid in self.children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def refusal(self, request: dict[str, Any]) -> str | None:
        """Why this server cannot run the request's process as the client itself would, if it cannot. A
        variable that the imports set here (`LD_LIBRARY_PATH`, `OMP_NUM_THREADS`) may come with that value:
        a stage passes them on to its forwarder."""
        if request["identity"] != self.started:
            return "another Python interpreter, sys.path or interpreter flags than the warm process's"
        client = request["env"]
        for name in sorted(set(self.env) | set(client)):
            value = client.get(name)
            if name.startswith(IMPORT_ENV) and not name.startswith(ADDRESS_VARIABLE) and value != self.env.get(name) \
                    and not (name in self.imported and value == self.imported[name]) \
                    and not (name in self.defaulted and value is None):
                return f"${name} differs from the warm process's, and its libraries read it as they are imported"
        return None

    def accept(self) -> None:
        """Read one request (its descriptors, then JSON); fork its child, or refuse it."""
        connection, _ = self.listener.accept()
        fds: list[int] = []
        try:
            connection.settimeout(REQUEST_TIMEOUT_S)
            if hasattr(socket, "SO_PEERCRED"):
                credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                if struct.unpack("3i", credentials)[1] != os.getuid():
                    raise ValueError("a client of another user")
            header, fds, _, _ = socket.recv_fds(connection, HEADER.size, 3)
            size, payload = HEADER.unpack(header)[0], b""
            while len(payload) < size:
                chunk = connection.recv(size - len(payload))
                if not chunk:
                    raise ValueError("request cut short")
                payload += chunk
            request = json.loads(payload)
            reason = self.refusal(request) or (None if len(fds) == 3 else "no standard streams received")
            if reason is not None:
                connection.sendall(json.dumps({"refused": reason}).encode() + b"\n")
                raise ValueError(reason)
            self.fork(connection, request, fds)
        except (OSError, ValueError):
            if connection not in self.children.values():
                connection.close()
        finally:
            for fd in fds:
                os.close(fd)

    def fork(self, connection: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        masked = {signal.SIGTERM, signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, masked)  # the child resets the handlers first
        pid = os.fork()
        if pid == 0:
            for sock in [self.listener, self.wakeup, self.wakeup_write, *self.children.values(), connection]:
                sock.close()
            self.selector.close()
            run_child(request, fds, self.pid, self.imported)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, masked)
        with open(self.folder / FORKS_LOG, "a") as log:
            log.write(f"{time.time():.3f} {pid} {request['module']} {' '.join(request['argv'])} "
                      f"cwd={request['cwd']}\n")
        self.children[pid] = connection
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        connection.settimeout(None)
        self.selector.register(connection, selectors.EVENT_READ, pid)

    def from_client(self, connection: socket.socket, pid: int) -> None:
        """A signal to forward to the child, or the client gone (killed): then the child is killed too."""
        try:
            data = connection.recv(4096)
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(connection)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            return
        for line in data.splitlines():
            with contextlib.suppress(ValueError, KeyError, OSError):
                os.kill(pid, int(json.loads(line)["signal"]))

    def reap(self) -> None:
        """Send each ended child's status to its client: its exit code, or minus the signal that ended it."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self.children.pop(pid, None)
            if connection is not None:
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(connection)
                connection.close()


def forget_project_code() -> None:
    """Drop any project module imported on the way (this package, to start), so that each child imports
    the experiment's own."""
    for name in [name for name in sys.modules if name.split(".")[0] in PROJECT_PACKAGES]:
        del sys.modules[name]


# --- the child: the client's process, forked from the server ---

def run_child(request: dict[str, Any], fds: list[int], server: int, imported: dict[str, str]) -> None:
    """Become the client's process and run its module; never returns."""
    try:
        if sys.platform.startswith("linux"):  # ends with the server
            import ctypes

            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server:
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, *FORWARDED):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in request["ignored"]:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGCHLD})
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"] | imported)
        os.umask(request["umask"])
        sys.path[:] = request["path"]
        sys.argv[:] = [request["module"], *request["argv"]]
        sys.orig_argv[:] = request["orig_argv"]
        for fd, (name, (encoding, errors, line_buffering, write_through)) in enumerate(
                zip(("stdin", "stdout", "stderr"), request["streams"], strict=True)):
            binary = open(fd, "rb" if fd == 0 else "wb", buffering=0 if write_through else -1,  # noqa: SIM115
                          closefd=False)  # sys.stdin, stdout and stderr, for the rest of the process
            stream = io.TextIOWrapper(binary, encoding=encoding, errors=errors, line_buffering=line_buffering,
                                      write_through=write_through)
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)
        importlib.invalidate_caches()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(run_module(request["module"]))


def run_module(module: str) -> int:
    """Run `module` as `python -m` does, and finish as the interpreter would: its exit status."""
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as end:
        status = exit_status(end.code)
    except BaseException as error:  # printed as the interpreter prints it, without this file's frames
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, runpy.__file__, "<frozen runpy>"):
            tb = tb.tb_next
        traceback.print_exception(type(error), error, tb)
        status = -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()  # waits for the threads that are not daemons, as at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if status < 0:  # as the interpreter does after an uncaught KeyboardInterrupt
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


# --- who starts it: the grid, or `python -m yolo_mlops.core.warm COMMAND...` ---

@contextmanager
def serving(root: Path, preload: tuple[str, ...] = PRELOAD) -> Iterator[Server | None]:
    """The warm process for the stages run inside this block (from DVC's queue, say), its address exported
    in $YOLO_MLOPS_WARM; stopped on exit. Yields None where there is none (switched off with
    YOLO_MLOPS_WARM= , or no fork on this system); a server already set is used as it is."""
    address = os.environ.get(ADDRESS_VARIABLE)
    if address == "" or not hasattr(os, "fork") or not hasattr(socket, "AF_UNIX"):
        yield None
        return
    if address and os.path.exists(address):
        yield Server(None, Path(address).parent)
        return
    folder = (root / WARM_DIR).resolve()
    if len(str(folder / SOCKET_FILE)) > MAX_SOCKET_PATH:
        yield None
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    folder.chmod(0o700)
    defaults = {ULTRALYTICS_CONFIG_VARIABLE: str(root.resolve() / ULTRALYTICS_CONFIG_DIR)}
    with open(folder / SERVER_LOG, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", MODULE, "--serve", str(folder),
             ",".join(preload), ",".join(name for name in defaults if name not in os.environ)],
            cwd=root, env=defaults | os.environ, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # no terminal: Ctrl-C reaches the stages through their clients only
    deadline = time.monotonic() + STOP_TIMEOUT_S  # it listens before its imports: clients wait for it then
    while not (folder / SOCKET_FILE).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.environ[ADDRESS_VARIABLE] = str(folder / SOCKET_FILE)
    try:
        yield Server(process.pid, folder)
    finally:
        os.environ.pop(ADDRESS_VARIABLE, None)
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(OSError):
            (folder / SOCKET_FILE).unlink()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        Warm(Path(argv[1]), [name for name in argv[3].split(",") if name]).serve(
            [name for name in argv[2].split(",") if name])
        return 0
    if not argv:
        print(__doc__.rsplit("\n\n", 1)[-1].strip(), file=sys.stderr)
        return 2
    with serving(Path.cwd()):
        return subprocess.call(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
