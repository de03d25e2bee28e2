"""Where replayed requests go: a network server (raw fast path), an in-process ASGI/WSGI app, or a
user's httpx.AsyncClient. `make_target` turns what the user gave (option string or fixture value)
into a Target."""

from __future__ import annotations

import importlib
import inspect
import os
import sys

from ..schedule.target import (APP_ERROR, CANCELLED, ERROR_KINDS, REFUSED, RESET, TIMEOUT, TRUNCATED, UNPARSABLE, Observation,
                   Target, TargetError)

__all__ = ["APP_ERROR", "CANCELLED", "ERROR_KINDS", "REFUSED", "RESET", "TIMEOUT", "TRUNCATED", "UNPARSABLE",
           "Observation", "Target", "TargetError", "make_target", "ACCEPTED_FORMS"]

DEMO_SPEC = "asgi:pytest_replay.demo.app:app"
ACCEPTED_FORMS = ("an http:// or https:// URL (e.g. http://127.0.0.1:8000)", "'asgi:module.path:attr'",
                  "'wsgi:module.path:attr'", "'demo' (the embedded demo service)",
                  "an httpx.AsyncClient with a base_url",
                  "an ASGI app (async callable taking scope, receive, send)",
                  "a WSGI app (callable taking environ, start_response)")


_NO_H2_IN_PROCESS = ("--replay-http-version 2 needs a network target (an http:// or https:// URL): in-process "
                     "apps are called through httpx, which speaks HTTP/2 only over the network")


def _accepted() -> str:
    return "; ".join(ACCEPTED_FORMS)


def make_target(spec, *, verify: bool = True, keep_host: bool = False, import_paths=(),
                http_version: str = "auto") -> Target:
    """A Target for `spec`; ValueError naming the accepted forms for anything else. `keep_host`: a
    network target or a user's client sends each request's own Host instead of the target's.
    `import_paths` (the rootdir, the current directory) are put first on sys.path for 'asgi:'/'wsgi:'
    modules, as `python -m pytest` does for the current directory and the `pytest` script does not.
    `http_version` ("auto", "1.1", "2"): what exchanges captured over HTTP/2 are replayed over, on a
    network target (targets/h2.py); in-process apps get HTTP/1.1 semantics through httpx, "2" is an
    error for them."""
    if isinstance(spec, str):
        text = spec.strip()
        if text == "demo":
            text = DEMO_SPEC
        lowered = text.lower()
        if lowered.startswith(("http://", "https://")):
            from .h2 import H2Target
            return H2Target(text, version=http_version, verify=verify, keep_host=keep_host)
        for prefix in ("asgi:", "wsgi:"):
            if lowered.startswith(prefix):
                if http_version == "2":
                    raise ValueError(_NO_H2_IN_PROCESS)
                app = _load(text[len(prefix):], spec, import_paths)
                from .inprocess import ASGITarget, WSGITarget
                cls = ASGITarget if prefix == "asgi:" else WSGITarget
                return cls(app, name=spec.strip())
        raise ValueError(f"unknown replay target {spec!r}: accepted forms are {_accepted()}")
    httpx = sys.modules.get("httpx")  # a client can only exist if httpx was imported
    if httpx is not None:
        if isinstance(spec, httpx.AsyncClient):
            from .inprocess import ClientTarget
            return ClientTarget(spec, keep_host=keep_host)
        if isinstance(spec, httpx.Client):
            raise ValueError("a synchronous httpx.Client can not be a replay target: use httpx.AsyncClient")
    if _is_target(spec):
        return spec
    kind = app_kind(spec)
    if kind is not None and http_version == "2":
        raise ValueError(_NO_H2_IN_PROCESS)
    if kind == "asgi":
        from .inprocess import ASGITarget
        return ASGITarget(spec)
    if kind == "wsgi":
        from .inprocess import WSGITarget
        return WSGITarget(spec)
    raise ValueError(f"can not use {type(spec).__name__} {spec!r:.80} as a replay target: accepted forms are "
                     f"{_accepted()}")


def _is_target(obj) -> bool:
    """Already a Target (a test double, a custom target): async start/send/close."""
    return all(inspect.iscoroutinefunction(getattr(obj, name, None)) for name in ("start", "send", "close"))


def _takes(fn, n: int) -> bool:
    try:
        inspect.signature(fn).bind(*range(n))
    except (TypeError, ValueError):
        return False
    return True


def app_kind(app) -> str | None:
    """'asgi' for an async callable taking 3 arguments, 'wsgi' for a plain callable taking 2, else None."""
    if isinstance(app, type) or not callable(app):
        return None
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", app)
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call):
        return "asgi" if _takes(call, 3) else None
    return "wsgi" if _takes(call, 2) else None


def _load(path: str, spec: str, import_paths=()):
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"replay target {spec!r}: expected 'asgi:module.path:attr' or 'wsgi:module.path:attr'")
    for directory in reversed([str(p) for p in import_paths]):  # the first given ends up first
        if directory not in sys.path and os.path.abspath(directory) not in map(os.path.abspath, sys.path):
            sys.path.insert(0, directory)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"replay target {spec!r}: can not import {module_name!r}: {exc}") from None
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ValueError(f"replay target {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj
