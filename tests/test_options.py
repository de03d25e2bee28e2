"""Every option is declared once (options.OPTIONS): flag, ini twin, help with its default, converter,
and the Settings attribute generated from it."""

from __future__ import annotations

import dataclasses

from pytest_replay import options


def test_every_option_states_its_default_and_has_one_settings_attribute() -> None:
    names = [option.name for option in options.OPTIONS]
    assert len(set(names)) == len(names)
    fields = {f.name: f.default for f in dataclasses.fields(options.Settings)}
    assert list(fields) == names
    for option in options.OPTIONS:
        assert "Default:" in option.help, option.flag
        assert option.flag.startswith("--")
        assert fields[option.name] == option.empty


def test_settings_are_frozen_and_keep_their_helpers() -> None:
    settings = options.Settings(captures=("a.gor",), include=(), exclude=())
    assert settings.enabled and not options.Settings().enabled
    assert settings.selects("GET /x")
    try:
        settings.speed = 2  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("Settings must be frozen")
