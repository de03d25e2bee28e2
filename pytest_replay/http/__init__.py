"""Layer 3: HTTP knowledge, in one place. message.py holds the frozen Request, Response and Exchange
values (bytes, ordered headers); parser.py frames and parses HTTP/1.x (httptools fast path beside a
readable reference path); normalize.py derives path templates and endpoint names. Header walking,
chunked detection, content decoding and time formatting live here and nowhere else. Imports nothing
of the package."""
