"""A side of the replay served by a subprocess (pytest_replay.serving, the replay_server fixture).

Two versions of one Django REST Framework project, both the package `shop` with process-wide Django
settings: they cannot be imported side by side in one process. The baseline (v1) runs in a
subprocess server started by a conftest fixture; the target is v1 or v2 in-process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from support import json_gets_gor

from pytest_replay.serving import ServeError, serve


SETTINGS = '''
SECRET_KEY = "not-a-secret: a test app"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS = ["rest_framework"]
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "PAGE_SIZE": 4,
}
SHOP_VERSION = {version}
'''

URLS = '''
import time

from django.conf import settings
from django.urls import include, path
from rest_framework import pagination, routers, viewsets
from rest_framework.response import Response

ITEMS = [{"id": i, "name": "Widget %d" % i, "price": i * 125} for i in range(1, 11)]


def shown(item, detail):
    out = {**item, "served_at": time.time_ns()}  # noise: differs on every response
    if detail and settings.SHOP_VERSION == 2:
        out["title"] = out.pop("name")  # the regression: a field renamed in the detail view
    return out


class Items(viewsets.ViewSet):
    def list(self, request):
        pages = pagination.PageNumberPagination()
        page = pages.paginate_queryset(ITEMS, request, view=self)
        return pages.get_paginated_response([shown(i, False) for i in page])

    def retrieve(self, request, pk=None):
        item = next((i for i in ITEMS if str(i["id"]) == pk), None)
        return Response(shown(item, True)) if item else Response({"detail": "Not found."}, status=404)


router = routers.DefaultRouter()
router.register("items", Items, basename="item")
urlpatterns = [path("api/", include(router.urls))]
'''

ASGI = '''
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
from django.core.asgi import get_asgi_application
application = get_asgi_application()
'''

WSGI = ASGI.replace("asgi", "wsgi")

CONFTEST = '''
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.environ["SHOP_CANDIDATE"]))  # the target: imported in-process
os.environ["DJANGO_SETTINGS_MODULE"] = "shop.settings"


@pytest.fixture(scope="session")
def replay_baseline(replay_server):
    url = replay_server("wsgi:shop.wsgi:application", path=[os.path.join(HERE, "v1")],
                        env={"DJANGO_SETTINGS_MODULE": "shop.settings"})
    with open(os.path.join(HERE, "baseline.pid"), "w") as f:
        f.write(str(url.pid))
    return url
'''

PATHS = ["/api/items/", "/api/items/?page=2", "/api/items/1/", "/api/items/7/", "/api/items/3/", "/api/items/1/"]
DETAIL = ["/api/items/1/", "/api/items/1/", "/api/items/3/", "/api/items/7/"]


def project(root: Path, version: int) -> None:
    package = root / f"v{version}" / "shop"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(SETTINGS.replace("{version}", str(version)))
    (package / "urls.py").write_text(URLS)
    (package / "asgi.py").write_text(ASGI)
    (package / "wsgi.py").write_text(WSGI)


def capture(path: Path) -> Path:
    return json_gets_gor(path, PATHS, "Accept: application/json")


@pytest.fixture
def shop(pytester: pytest.Pytester) -> Path:
    project(pytester.path, 1)
    project(pytester.path, 2)
    pytester.makeconftest(CONFTEST)
    return capture(pytester.path / "shop.gor")


def replay(pytester: pytest.Pytester, gor: Path, candidate: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SHOP_CANDIDATE", candidate)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(gor), "--speed", "0", "-rf",
                                         "--replay-target", "asgi:shop.asgi:application", timeout=300)


def gone(pid: int) -> bool:
    deadline = time.monotonic() + 15
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    return not os.path.exists(f"/proc/{pid}")


def test_a_django_release_in_a_subprocess_is_the_baseline_of_the_next_version_in_process(
        pytester: pytest.Pytester, shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    same = replay(pytester, shop, "v1", monkeypatch)
    assert same.ret == 0, same.stdout.str()
    same.assert_outcomes(passed=len(PATHS))
    assert "$.served_at" in same.stdout.str()  # noise measured on the subprocess baseline
    assert gone(int((pytester.path / "baseline.pid").read_text()))  # stopped at the session's end

    regressed = replay(pytester, shop, "v2", monkeypatch)
    text = regressed.stdout.str()
    failed = sorted(line.split("::GET ", 1)[1].split(" #")[0] for line in regressed.stdout.lines
                    if line.startswith("FAILED shop.gor::"))
    assert failed == sorted(DETAIL), text  # v2's renamed field; the lists (v1 and v2 alike) pass
    assert "$.name" in text and "field or element added or removed" in text
    assert "FAILED replay-baseline::GET /api/items/{id}/ $.name" in text
    assert gone(int((pytester.path / "baseline.pid").read_text()))


def test_an_app_that_fails_to_start_is_an_error_with_its_output(pytester: pytest.Pytester, shop: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (pytester.path / "v1" / "shop" / "settings.py").write_text("raise RuntimeError('DATABASE_URL is not set')\n")
    result = replay(pytester, shop, "v2", monkeypatch)
    text = result.stdout.str()
    result.assert_outcomes(errors=len(PATHS))
    assert "serve 'wsgi:shop.wsgi:application': the app exited with status 1" in text
    assert "RuntimeError: DATABASE_URL is not set" in text  # the tail of its stderr
    assert "def start(" not in text  # not the fixture's own traceback


def test_serve_stops_the_server_on_an_exception_and_says_why_it_could_not_start(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(textwrap.dedent('''
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
            await send({"type": "http.response.body", "body": b"hello"})

        def wsgi(environ, start_response):
            start_response("200 OK", [("Content-Length", "4")])
            return [b"wsgi"]

        not_an_app = 42
    '''))
    with pytest.raises(KeyboardInterrupt):  # as Ctrl-C in the block
        with serve("hello:app", path=[tmp_path]) as url:  # ASGI, detected
            assert urllib.request.urlopen(url + "/", timeout=10).read() == b"hello"
            pid = url.pid
            raise KeyboardInterrupt
    assert gone(pid)
    with serve("wsgi:hello:wsgi", path=[tmp_path]) as url:
        assert urllib.request.urlopen(url + "/", timeout=10).read() == b"wsgi"
    with pytest.raises(ServeError, match=r"(?s)exited with status 3.*neither an ASGI nor a WSGI app"):
        with serve("hello:not_an_app", path=[tmp_path]):
            pass
    with pytest.raises(ServeError, match=r"(?s)exited with status 3.*can not import 'nowhere'"):
        with serve("asgi:nowhere:app", path=[tmp_path]):
            pass
    with pytest.raises(ServeError, match="expected 'module.path:attr'"):
        with serve("hello", path=[tmp_path]):
            pass


def test_a_server_outlives_no_killed_parent(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text("def app(environ, start_response):\n"
                                       "    start_response('200 OK', [])\n    return [b'x']\n")
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f'''
        import os, signal, sys
        from pytest_replay.serving import serve
        with serve("wsgi:hello:app", path=[{str(tmp_path)!r}]) as url:
            print(url.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: only the child's watch is left
    '''))
    parent = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    assert gone(int(parent.stdout.split()[0]))
