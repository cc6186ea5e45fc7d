"""Credentials out of anything shown: `config check`, `config show`, error messages, logs.

A URL may carry a user name and password (`rtsp://admin:hunter2@10.0.0.5/stream`,
`mqtt://u:p@broker`): `redact` replaces the password (or a lone token, `https://TOKEN@host`)
with `****`, wherever such a URL appears in a text, and leaves the rest readable.
"""
from __future__ import annotations

import re

MASK = "****"
# scheme://userinfo@ : userinfo is everything up to the first '@' that comes before any '/',
# whitespace or quote (RFC 3986 allows ':' in the password, and '@' only percent-encoded).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"]*)@")


def _mask(m: re.Match) -> str:
    user, sep, _password = m["userinfo"].partition(":")
    if sep:
        return f"{m['scheme']}{user}:{MASK}@"
    return f"{m['scheme']}{MASK}@"  # a lone token in the user part is a secret too


def redact(text):
    """`text` with the credentials of every URL in it masked; non-strings come back as they are."""
    if not isinstance(text, str) or "@" not in text:
        return text
    return _USERINFO.sub(_mask, text)


def has_credentials(url: str) -> bool:
    return isinstance(url, str) and _USERINFO.search(url) is not None
