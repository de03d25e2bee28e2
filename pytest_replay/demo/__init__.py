"""The embedded demo service: a small in-memory shop API (pure ASGI 3) to replay captures against."""

from pytest_replay.demo.app import REGRESSIONS, DemoShop, app, make_app, session_for, token_for

__all__ = ["REGRESSIONS", "DemoShop", "app", "make_app", "session_for", "token_for"]
