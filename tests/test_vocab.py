"""The fixed vocabularies (pytest_replay/vocab.py): StrEnums in a leaf module, equal to the strings
the evidence and the options always used, and plain str again where execnet needs it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from pytest_replay import options, vocab
from pytest_replay.policy import writes
from pytest_replay.schedule import stages, target
from pytest_replay.verdicts import origin
from pytest_replay.vocab import ErrorKind, Group, Judge, WriteDecision, WriteMode, plain


def test_vocab_is_a_leaf_module() -> None:
    tree = ast.parse(Path(vocab.__file__).read_text())
    imported = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.level == 0 and n.module in ("__future__", "enum")
               for n in imported)


def test_the_definitions_are_the_vocabularies_members() -> None:
    assert writes.MOCK is WriteDecision.MOCK and writes.MODES[WriteMode.PASS] is WriteDecision.SEND
    assert target.ERROR_KINDS == tuple(ErrorKind) and target.APP_ERROR == "app-error"
    assert stages.FIXED is vocab.StageKind.FIXED and origin.SAME is vocab.Origins.SAME
    assert options.GROUPS == ("exchange", "endpoint", "connection")


@pytest.mark.parametrize("convert, text, member", [
    (options.choice("--replay-group", options.GROUPS), "endpoint", Group.ENDPOINT),
    (options.choice("--replay-judge", tuple(Judge)), "during", Judge.DURING),
    (writes.parse_write_mode, " Pass ", WriteMode.PASS),
])
def test_options_give_members_equal_to_their_text(convert, text, member) -> None:
    value = convert(text)
    assert value is member and value == text.strip().lower()
    assert json.dumps({value: value}) == json.dumps({text.strip().lower(): text.strip().lower()})


def test_an_unknown_choice_names_the_accepted_values() -> None:
    with pytest.raises(pytest.UsageError, match="expected one of exchange, endpoint, connection, got 'host'"):
        options.choice("--replay-group", options.GROUPS)("host")


def test_plain_gives_builtin_str_for_execnet() -> None:
    data = {"errors": {ErrorKind.TIMEOUT: 2}, "rows": [(Group.ENDPOINT, [WriteDecision.SKIP])], "n": 1}
    out = plain(data)
    assert out == data
    assert type(next(iter(out["errors"]))) is str and type(out["rows"][0][0]) is str
    assert type(out["rows"][0][1][0]) is str and isinstance(out["rows"][0], tuple)
    import execnet.gateway_base as base  # what xdist's channels serialize with

    assert base.loads_internal(base.dumps_internal(out)) == data
    with pytest.raises(base.DumpError):
        base.dumps_internal(data)
