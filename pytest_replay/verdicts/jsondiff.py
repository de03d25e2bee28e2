"""What changed between two JSON documents, as deepdiff's tree view reports it (ignore_order=False).

Two paths under one name, tested against each other (tests/test_verdicts.py, Hypothesis on random
JSON pairs): `changes(a, b)` walks the documents itself; `changes(a, b, fast=False)` asks deepdiff,
the reference. The walk exists because deepdiff costs ~40-300 us per node of the whole document
whatever changed: for every node it copies its chain of levels from the root, builds the node's path
string (parsing every list index back with ast.literal_eval) to ask whether the path is excluded. A
one-value change in a 200 KB body took 0.7-6 s (issue 13.1). The walk skips equal subtrees with
C-level comparisons and builds paths only for what differs.

deepdiff's rules (8.0 and later), kept exactly: two objects sharing less than a third of their keys
are one changed value (threshold_to_diff_deeper); a type change (bool is not int, int is not float) is reported
where it occurs and not looked into; dict keys only on one side are added/removed; lists are
compared in order: lists of scalars with difflib (equal elements by ==, so 1 and true match),
unless comparing index by index gives no more changes; other lists index by index; a list item
removed and one added at the same index become one changed value.

Sans-IO: values in, a list of `Change` out.
"""

from __future__ import annotations

import difflib
import marshal
from typing import NamedTuple

__all__ = ["MISSING", "Change", "Walk", "changes", "deepdiff_path"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()  # the side of an added or removed item that has none

VALUES, TYPES = "values_changed", "type_changes"
DICT_ADDED, DICT_REMOVED = "dictionary_item_added", "dictionary_item_removed"
ITEM_ADDED, ITEM_REMOVED, ITEM_MOVED = "iterable_item_added", "iterable_item_removed", "iterable_item_moved"
SCALARS = frozenset({str, int, float, bool, type(None)})
CONTAINERS = (dict, list)
DEEPER = 0.33  # deepdiff's threshold_to_diff_deeper: objects sharing fewer keys differ as a whole


class Change(NamedTuple):
    kind: str  # deepdiff's report type: "values_changed", "type_changes", "dictionary_item_added", ...
    keys: tuple  # from the root: dict keys and list indices (t1's index, t2's for an added item)
    old: object  # MISSING for an added item
    new: object  # MISSING for a removed item

    @property
    def path(self) -> str:
        return deepdiff_path(self.keys)


def deepdiff_path(keys) -> str:
    """``('a', 0)`` -> ``root['a'][0]``, written as deepdiff writes it (rules match on this)."""
    return "root" + "".join(f"[{key}]" if isinstance(key, int) else f"[{_quoted(key)}]" for key in keys)


def _quoted(key: str) -> str:
    if "'" in key:
        return f'"{key}"'
    return f"'{key}'"


class _Unsupported(Exception):
    """A value that is not JSON (a tuple, a set, bytes...): the reference judges the whole pair."""


def _strict_same(a, b) -> bool:
    """`a == b` known: is there no bool standing for 1 or 0 in it (1 == True in Python, not in
    deepdiff)? Serialised by marshal (C, ~2.5x faster than json.dumps; format 2 has no back-references,
    which would depend on reference counts) true and 1 differ; keys in another order make it False
    (then walked, correct but slower)."""
    try:
        return marshal.dumps(a, 2) == marshal.dumps(b, 2)
    except (ValueError, RecursionError):
        return False


class Walk:
    """The fast path: one walk over two documents. `descents` counts the containers looked into
    (the work beyond C-level comparisons): a complexity check for tests, never a timer."""

    __slots__ = ("found", "descents", "deferred")

    def __init__(self) -> None:
        self.found: list[Change] = []
        self.descents = 0
        self.deferred: list[tuple] = []  # containers equal by ==, to be checked for true vs 1

    def run(self, a, b) -> list[Change]:
        self.pair(a, b, (), self.found)
        while self.deferred:
            batch, self.deferred = self.deferred, []
            if _strict_same([x for x, _, _ in batch], [y for _, y, _ in batch]):
                break  # the usual case: one serialisation of each side's equal parts
            for x, y, keys in batch:
                if not _strict_same(x, y):
                    (self.dict if type(x) is dict else self.list)(x, y, keys, self.found)
        return self.found

    def pair(self, a, b, keys: tuple, out: list) -> None:
        if a is b:
            return
        kind = type(a)
        if kind is not type(b):
            if kind not in SCALARS and kind not in CONTAINERS or type(b) not in SCALARS and type(b) not in CONTAINERS:
                raise _Unsupported
            out.append(Change(TYPES, keys, a, b))
        elif kind is dict or kind is list:
            if _equal(a, b):  # by ==, where 1 == True: checked in a batch by run()
                self.deferred.append((a, b, keys))
            else:
                (self.dict if kind is dict else self.list)(a, b, keys, out)
        elif kind not in SCALARS:
            raise _Unsupported
        elif a != b:
            out.append(Change(VALUES, keys, a, b))

    def dict(self, a: dict, b: dict, keys: tuple, out: list) -> None:
        self.descents += 1
        added = [key for key in b if key not in a]
        removed = [key for key in a if key not in b]
        shared = len(a) - len(removed)
        union = shared + len(added) + len(removed)
        if union > 1 and shared / union < DEEPER:
            out.append(Change(VALUES, keys, a, b))  # little in common: one changed value
            return
        out.extend(Change(DICT_ADDED, (*keys, key), MISSING, b[key]) for key in added)
        out.extend(Change(DICT_REMOVED, (*keys, key), a[key], MISSING) for key in removed)
        for key, x in a.items():
            if key in b:
                y = b[key]
                if x is not y and not self.same(x, y, keys, key):
                    self.pair(x, y, (*keys, key), out)

    def same(self, x, y, keys: tuple, key) -> bool:
        """Equal by == and of one type (containers deferred to run()'s check for true vs 1):
        nothing to look into. Inlined where the walk spends its time."""
        kind = type(x)
        if kind is not type(y) or not _equal(x, y):
            return False
        if kind is dict or kind is list:
            self.deferred.append((x, y, (*keys, key)))
        return True

    def list(self, a: list, b: list, keys: tuple, out: list) -> None:
        self.descents += 1
        if _scalars(a) and _scalars(b):
            return self.scalar_list(a, b, keys, out)
        self.pairs(a, b, keys, out, 0, 0)

    def pairs(self, a: list, b: list, keys: tuple, out: list, a_from: int, b_from: int) -> None:
        """Index by index (deepdiff's "forming pairs"); offsets: a chunk of difflib's replace."""
        shared = min(len(a), len(b))
        for n in range(shared):
            i, j = n + a_from, n + b_from
            x, y = a[n], b[n]
            if i == j and (x is y or self.same(x, y, keys, i)):
                continue
            if i != j and x == y:  # cannot happen in a replace chunk (difflib matched them); as deepdiff
                out.append(Change(ITEM_MOVED, (*keys, i), x, y))
                continue
            self.pair(x, y, (*keys, i), out)
        for n in range(shared, len(a)):
            out.append(Change(ITEM_REMOVED, (*keys, n + a_from), a[n], MISSING))
        for n in range(shared, len(b)):
            out.append(Change(ITEM_ADDED, (*keys, n + b_from), MISSING, b[n]))

    def scalar_list(self, a: list, b: list, keys: tuple, out: list) -> None:
        """deepdiff: difflib's opcodes, unless index by index gives no more changes. With equal
        lengths and at most one change index by index, both agree: difflib is not run. Equal by ==
        (true for 1 included): difflib matches every item, nothing to report."""
        if a == b:
            return
        pairwise: list[Change] = []
        if len(a) == len(b):
            self.pairs(a, b, keys, pairwise, 0, 0)
            if len(pairwise) <= 1:
                out.extend(pairwise)
                return
        by_difflib = self.opcodes(a, b, keys)
        if len(by_difflib) > 1:
            if len(a) != len(b):
                self.pairs(a, b, keys, pairwise, 0, 0)
            if len(by_difflib) >= len(pairwise):
                by_difflib = pairwise
        out.extend(_merge_moves(by_difflib))

    def opcodes(self, a: list, b: list, keys: tuple) -> list[Change]:
        found: list[Change] = []
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "replace":
                self.pairs(a[i1:i2], b[j1:j2], keys, found, i1, j1)
            elif tag == "delete":
                found.extend(Change(ITEM_REMOVED, (*keys, i), a[i], MISSING) for i in range(i1, i2))
            elif tag == "insert":
                found.extend(Change(ITEM_ADDED, (*keys, j), MISSING, b[j]) for j in range(j1, j2))
        return found


def _equal(a, b) -> bool:
    try:
        return a == b
    except RecursionError:
        return False


def _scalars(items: list) -> bool:
    return not any(type(item) in CONTAINERS for item in items)


def _merge_moves(found: list[Change]) -> list[Change]:
    """deepdiff's last step: an item removed and one added at the same index are a changed value."""
    added = {c.keys: c for c in found if c.kind == ITEM_ADDED}
    removed = {c.keys for c in found if c.kind == ITEM_REMOVED}
    both = removed & added.keys()
    if not both:
        return found
    return [Change(VALUES, c.keys, c.old, added[c.keys].new) if c.keys in both else c
            for c in found if not (c.kind == ITEM_ADDED and c.keys in both)]


FAST_PATH = True  # the default for `fast`: tests flip it to run a suite on the reference path


def changes(a, b, *, fast: bool | None = None, walk: Walk | None = None) -> list[Change]:
    """What changed from `a` to `b`, in no particular order (callers sort). `walk`: a Walk to use
    (its `descents` then says how much of the documents was looked into)."""
    if FAST_PATH if fast is None else fast:
        try:
            return (walk or Walk()).run(a, b)
        except _Unsupported:
            pass
    return reference(a, b)


def reference(a, b) -> list[Change]:
    """deepdiff's tree view as Changes (imported here: a quarter of a second, and only the
    reference and non-JSON values need it)."""
    from deepdiff import DeepDiff
    from deepdiff.helper import notpresent

    tree = DeepDiff(a, b, ignore_order=False, view="tree")
    side = lambda value: MISSING if value is notpresent else value  # noqa: E731
    return [Change(kind, tuple(level.path(output_format="list")), side(level.t1), side(level.t2))
            for kind in tree for level in tree[kind]]
