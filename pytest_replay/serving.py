"""An ASGI or WSGI app served by a subprocess on 127.0.0.1, for one side of a replay.

Python imports a module name once per process, and frameworks keep process-wide settings (Django's
`settings.configure`, a DJANGO_SETTINGS_MODULE), so two versions of one package cannot run side by
side in-process. `serve` starts one of them in its own interpreter under uvicorn (ASGI, or WSGI
through uvicorn's WSGI interface), waits until it listens, yields its URL and stops it::

    # conftest.py: the last release as the baseline, this branch in-process as the target
    import pytest
    from pytest_replay.serving import serve

    @pytest.fixture(scope="session")
    def replay_baseline():
        with serve("asgi:shop.asgi:application", path=["../release"],
                   env={"DJANGO_SETTINGS_MODULE": "shop.settings"}) as url:
            yield url

The `replay_server` fixture does the same for the whole session: `replay_server("wsgi:app:app")`.

The child binds 127.0.0.1 on a free port itself (no race for the port) and reports it on a pipe of
its own once uvicorn has started (after the app was imported and its lifespan startup ran), so
"listening" means "answering". If it exits or does not report in time, `ServeError` says so with the
tail of what it wrote to stderr. It is stopped with SIGTERM (then SIGKILL) when the block ends, on an
exception or Ctrl-C too, at the interpreter's exit if nothing else did, and it stops itself if the
process that started it disappears (a killed pytest leaves no server behind).

    python -m pytest_replay.serving KIND SPEC FD PARENT_PID   (the child; not for users)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping

__all__ = ["ServeError", "ServerURL", "Servers", "serve"]

KINDS = ("asgi", "wsgi")
STDERR_TAIL = 2000  # characters of the child's output shown when it fails
_STOP_S = 10.0
_running: dict[int, subprocess.Popen] = {}  # pid -> process, stopped at exit if still running


class ServeError(RuntimeError):
    """The app could not be started (or was not answering in time)."""


class ServerURL(str):
    """The server's URL ('http://127.0.0.1:PORT'), with its process id and output log."""

    pid: int
    log: str

    def __new__(cls, url: str, pid: int, log: str) -> ServerURL:
        self = super().__new__(cls, url)
        self.pid, self.log = pid, log
        return self


def _split(app: str, kind: str | None) -> tuple[str, str]:
    """('asgi'|'wsgi'|'', 'module:attr') from 'asgi:module:attr', 'module:attr' and `kind`."""
    text = app.strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in KINDS:
        if kind is not None and kind != prefix.lower():
            raise ServeError(f"serve {app!r}: kind={kind!r} contradicts the {prefix.lower()}: prefix")
        kind, text = prefix.lower(), rest
    if kind is not None and kind not in KINDS:
        raise ServeError(f"serve {app!r}: kind must be 'asgi' or 'wsgi', got {kind!r}")
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise ServeError(f"serve {app!r}: expected 'module.path:attr', optionally prefixed with 'asgi:' or 'wsgi:' "
                         "(e.g. 'asgi:shop.asgi:application')")
    return kind or "", text


def _tail(log: str) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - STDERR_TAIL))
            text = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text or "(it wrote nothing)"


def _stop(proc: subprocess.Popen) -> None:
    _running.pop(proc.pid, None)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@atexit.register
def _stop_all() -> None:
    for proc in list(_running.values()):
        _stop(proc)


def _wait_ready(proc: subprocess.Popen, fd: int, timeout: float) -> int | None:
    """The port the child reports on `fd`, or None if it exits or the time runs out first."""
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if selector.select(min(left, 0.2)):
                chunk = os.read(fd, 64)
                if not chunk:  # the child closed its end: it exited
                    return None
                data += chunk
            elif proc.poll() is not None:
                return None
    try:
        return int(data.split(b"\n", 1)[0])
    except ValueError:
        return None


_PATH_VAR = "PYTEST_REPLAY_SERVE_PATH"  # the caller's directories, put first on the child's sys.path


def _environment(env: Mapping[str, str] | None, path: list) -> dict[str, str]:
    environ = {**os.environ, **(env or {})}
    # the child imports this package (and the app's dependencies) as the parent does
    entries = [environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else []
    entries += [p for p in sys.path if p]
    environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    environ[_PATH_VAR] = os.pathsep.join(os.path.abspath(str(p)) for p in path)
    return environ


@contextlib.contextmanager
def serve(app: str, *, kind: str | None = None, cwd: str | os.PathLike | None = None,
          env: Mapping[str, str] | None = None, path: Iterable[str | os.PathLike] = (),
          timeout: float = 30.0) -> Iterator[ServerURL]:
    """Serve `app` ('asgi:module:attr', 'wsgi:module:attr', or 'module:attr' with `kind` or detected)
    in a subprocess on 127.0.0.1; yields its URL. `path`: directories put first on the child's
    sys.path (a checkout of another version); `env`: environment variables added for the child
    (DJANGO_SETTINGS_MODULE); `cwd`: its working directory; `timeout`: seconds to start."""
    kind, spec = _split(app, kind)
    path = list(path)
    read_fd, write_fd = os.pipe()
    log = tempfile.NamedTemporaryFile(prefix="replay-serve-", suffix=".log", delete=False)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_replay.serving", kind or "auto", spec, str(write_fd), str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
            cwd=None if cwd is None else str(cwd), env=_environment(env, path))
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        log.close()
        raise ServeError(f"serve {app!r}: cannot start {sys.executable}: {exc}") from None
    finally:
        log.close()
    os.close(write_fd)
    _running[proc.pid] = proc
    try:
        try:
            port = _wait_ready(proc, read_fd, timeout)
        finally:
            os.close(read_fd)
        if port is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)  # it closed the pipe: it is exiting
            running = proc.poll() is None
            _stop(proc)
            what = f"did not answer within {timeout:g} s" if running else f"exited with status {proc.returncode}"
            raise ServeError(f"serve {app!r}: the app {what}; its output ends with:\n{_tail(log.name)}")
        yield ServerURL(f"http://127.0.0.1:{port}", proc.pid, log.name)
    finally:
        _stop(proc)
        with contextlib.suppress(OSError):
            os.unlink(log.name)


class Servers:
    """Several `serve`d apps stopped together (the `replay_server` fixture): `start(app, ...)` -> URL."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def start(self, app: str, **options) -> ServerURL:
        return self._stack.enter_context(serve(app, **options))


# -- the child ------------------------------------------------------------------------------------------------
def _watch_parent(parent: int, server) -> None:
    """Stop when the process that started us is gone (killed pytest: its servers must not linger)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    server.should_exit = True
    time.sleep(_STOP_S)
    os._exit(1)


def _report_ready(server, fd: int, port: int) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.02)
    os.write(fd, f"{port}\n".encode())
    os.close(fd)


def _child(kind: str, spec: str, fd: int, parent: int) -> int:
    import socket

    from .targets import _load, app_kind

    try:
        import uvicorn
    except ImportError:
        print("serve: uvicorn is needed to serve an app (pip install uvicorn)", file=sys.stderr)
        return 2
    for directory in reversed(os.environ.pop(_PATH_VAR, "").split(os.pathsep)):
        if directory:  # before the working directory and PYTHONPATH: another version of the app wins
            sys.path.insert(0, directory)
    try:
        app = _load(spec, spec)
    except ValueError as exc:
        print(f"serve: {str(exc).removeprefix('replay target ')}", file=sys.stderr)
        return 3
    found = app_kind(app)
    kind = found if kind == "auto" else kind
    if kind not in KINDS:
        print(f"serve: {spec} is {type(app).__name__}, neither an ASGI nor a WSGI app", file=sys.stderr)
        return 3
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, interface="wsgi" if kind == "wsgi" else "auto", log_level="warning",
                            access_log=False, lifespan="auto")
    server = uvicorn.Server(config)
    threading.Thread(target=_report_ready, args=(server, fd, port), daemon=True).start()
    threading.Thread(target=_watch_parent, args=(parent, server), daemon=True).start()
    server.run(sockets=[sock])
    return 0 if server.started else 4


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
