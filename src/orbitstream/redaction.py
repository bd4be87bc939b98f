"""Masking secrets in text that reaches logs and error messages.

URLs may carry a password in their user info (``scheme://user:password@host``) or in a
query parameter (``?password=…``). A password may hold any character, ``/``, ``@`` and
``?`` included, so the user info is taken to end at the *last* ``@`` of the URL — which
may mask more than the password (a path or query holding an ``@``), never less.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "redact_url"]

MASK = "***"
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|sslpassword|secret|client_secret|token|access_token)=)"
    r"[^&;#]*"
)


def redact_url(text: str) -> str:
    """``text`` with the password of a URL (user info or query parameter) masked."""
    scheme_end = text.find("://")
    if scheme_end < 0:
        return _SECRET_PARAM.sub(rf"\g<1>{MASK}", text)
    head, rest = text[: scheme_end + 3], text[scheme_end + 3 :]
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        if ":" in userinfo:
            rest = userinfo.split(":", 1)[0] + ":" + MASK + rest[at:]
    return _SECRET_PARAM.sub(rf"\g<1>{MASK}", head + rest)
