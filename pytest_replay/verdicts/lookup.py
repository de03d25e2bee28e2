"""One header of a message without splitting its whole head (the judge's hot path, issue 13.1).

Judging a passing exchange needs a handful of fields: the responses' Content-Encoding (and their
Content-Type when the bodies differ), the request's Host and forwarding headers (the origins).
`Message.header()` splits the whole head into pairs on first use (http/message.py `split_head`), which
was a fifth of a streamed run's judge thread for three or four lookups per exchange. `header()` here
answers the same question from the head's bytes when the answer is plain, and asks `Message.header()`
(the reference) otherwise:

- a head that does not contain the name at all (case-insensitively) cannot hold the field: None;
- a head whose first occurrence of the name starts a line "name:" (after a line break: never the
  start line) whose next line is not a folded continuation: the value on that line, with the blanks
  and CR that split_head strips, stripped (any field of that name before it would have held an
  earlier occurrence: this is the first);
- anything else (the name first inside another field's name or value or the start line, "Name :",
  a folded value): `message.header(name)`, the reference. A message whose header pairs were given
  or parsed already: a walk of its pairs.

Tested against `message.header()` on random heads (tests/test_judgefast.py).
"""

from __future__ import annotations

from ..http.message import header_value


def header(message, name: bytes) -> bytes | None:
    """`message.header(name)` (first value, case-insensitive); `name` in lower case, as bytes."""
    pairs = message._headers
    if pairs is not None:  # given (built messages, HTTP/2) or parsed already: a walk of the pairs
        return header_value(pairs, name)
    head = message.head
    return _in_head(message, head, head.lower(), name)


def headers(message, names: tuple[bytes, ...]) -> tuple[bytes | None, ...]:
    """`header(message, name)` for each of `names`, the head lowered once for all of them (the origins of
    every exchange ask for three fields of its request)."""
    pairs = message._headers
    if pairs is not None:
        return tuple(header_value(pairs, name) for name in names)
    head = message.head
    lower = head.lower()
    return tuple(_in_head(message, head, lower, name) for name in names)


def _in_head(message, head: bytes, lower: bytes, name: bytes) -> bytes | None:
    at = lower.find(name)
    if at < 0:
        return None
    start = at + len(name)
    if at == 0 or lower[at - 1] != 10 or lower[start:start + 1] != b":":
        return header_value(message.headers, name)  # (10: b"\n")
    end = head.find(b"\n", start)
    if end < 0 or head[end + 1:end + 2] in (b" ", b"\t"):  # the head's last line, or a folded value
        return header_value(message.headers, name)
    return head[start + 1:end].strip(b" \t\r")
