"""Layer 3: HTTP knowledge, in one place. message.py holds the frozen Request, Response and Exchange
values (bytes, ordered headers) and the one header walk, chunked test and token check; parser.py frames
and parses HTTP/1.x (httptools fast path beside a readable reference path); normalize.py derives path
templates and endpoint names; content.py undoes content codings; sensitive.py decides what is secret;
units.py formats milliseconds. Header walking, chunked detection, content decoding and time
formatting live here and nowhere else. Imports nothing
of the package."""
