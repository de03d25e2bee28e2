"""Small predicates combined with `&`, `|` and `~` (respx-style), shared by the request rules of
the replay policy (policy/rules.py) and the ignore rules of the verdicts (verdicts/rules.py).

A family of rules has its own base class (with its own vocabulary: `matches(request, host)`,
`ignores(point)`) deriving from Rule; `family(Base)` makes its And, Or and Not, so combining two
rules of a family gives a rule of that family. A leaf implements `test(*args) -> bool`; And, Or and
Not pass the same arguments to their parts; `leaves()` lists the leaf rules of a combination.
"""

from __future__ import annotations

from dataclasses import dataclass


class Rule:
    __slots__ = ()
    _and: type
    _or: type
    _not: type

    def test(self, *args) -> bool:
        raise NotImplementedError

    def leaves(self) -> tuple[Rule, ...]:
        return (self,)

    def __and__(self, other: Rule) -> Rule:
        return self._and((self, other))

    def __or__(self, other: Rule) -> Rule:
        return self._or((self, other))

    def __invert__(self) -> Rule:
        return self._not(self)


def family(base: type[Rule]) -> tuple[type, type, type]:
    """And, Or and Not classes for the rules deriving from `base`."""

    @dataclass(frozen=True, slots=True)
    class And(base):
        rules: tuple[Rule, ...]

        def test(self, *args) -> bool:
            return all(rule.test(*args) for rule in self.rules)

        def leaves(self) -> tuple[Rule, ...]:
            return tuple(leaf for rule in self.rules for leaf in rule.leaves())

        def __str__(self) -> str:
            scopes = [r for r in self.rules if getattr(r, "is_scope", False)]
            rest = [r for r in self.rules if not getattr(r, "is_scope", False)]
            if len(scopes) == 1 and len(rest) == 1:  # the scoped form users type: "GET /x: rule"
                return f"{scopes[0]}: {rest[0]}"
            return "(" + " & ".join(map(str, self.rules)) + ")"

    @dataclass(frozen=True, slots=True)
    class Or(base):
        rules: tuple[Rule, ...]

        def test(self, *args) -> bool:
            return any(rule.test(*args) for rule in self.rules)

        def leaves(self) -> tuple[Rule, ...]:
            return tuple(leaf for rule in self.rules for leaf in rule.leaves())

        def __str__(self) -> str:
            return "(" + " | ".join(map(str, self.rules)) + ")"

    @dataclass(frozen=True, slots=True)
    class Not(base):
        rule: Rule

        def test(self, *args) -> bool:
            return not self.rule.test(*args)

        def leaves(self) -> tuple[Rule, ...]:
            return self.rule.leaves()

        def __str__(self) -> str:
            return f"~{self.rule}"

    for cls in (And, Or, Not):
        cls.__module__ = base.__module__
        cls.__qualname__ = cls.__name__
    base._and, base._or, base._not = And, Or, Not
    return And, Or, Not
