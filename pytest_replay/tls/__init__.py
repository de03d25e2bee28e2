"""TLS decryption from session keys (sans-IO): key logs, the record layer, key schedules and
per-connection decryption producing the plaintext byte streams the HTTP framing reads.

Keys come from NSS key log files (``SSLKEYLOGFILE``) and from pcapng Decryption Secrets Blocks.
Key material stays in memory: nothing here writes it out, and reprs never show it.
"""

from .keylog import KeyLog

__all__ = ["KeyLog"]
