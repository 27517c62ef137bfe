"""Keeping secrets out of everything the agent prints, logs or stores: pure text functions.

A secret can reach text in two ways: as a value we know (the access key, secret key and
session token boto3 will use) or inside a shape we can recognise (userinfo in a URL, a
presigned URL's signature, an `Authorization` header). Both are replaced by `***`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable

MASK = "***"

# Environment variables whose values are credentials.
SECRET_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)

# Shapes that carry a secret whatever its value. Each keeps its name and masks the value.
_PATTERNS = (
    # scheme://user:password@host → scheme://***@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@"), rf"\1{MASK}@"),
    # presigned URLs and query strings
    (
        re.compile(
            r"(?i)\b(X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId)"
            r"=[^&\s\"']+"
        ),
        rf"\1={MASK}",
    ),
    # HTTP headers, in any quoting
    (
        re.compile(
            r"(?i)(['\"]?(?:Authorization|X-Amz-Security-Token)['\"]?\s*:\s*['\"]?)[^'\"\n]+"
        ),
        rf"\1{MASK}",
    ),
    # credential files and ini-style dumps
    (
        re.compile(r"(?i)\b(aws_(?:secret_access_key|session_token|security_token)\s*[=:]\s*)\S+"),
        rf"\1{MASK}",
    ),
)

# Values shorter than this are not treated as secrets: masking "a" everywhere would make
# every message unreadable, and a credential that short protects nothing anyway.
_MINIMUM_SECRET_LENGTH = 8


class SecretRegistry:
    """The known secret values, from the environment and from whatever else registers them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str | None]) -> None:
        """Remember more secret values (None and short values are ignored)."""
        fresh = {value for value in values if value and len(value) >= _MINIMUM_SECRET_LENGTH}
        with self._lock:
            if fresh <= self._values:
                return
            self._values = self._values | fresh
            # Longest first, so a secret that contains another is masked whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(value) for value in ordered))

    def add_environment(self, environ: os._Environ[str] | dict[str, str] | None = None) -> None:
        """Remember the credential variables of `environ` (default: this process's)."""
        source = os.environ if environ is None else environ
        self.add(source.get(name) for name in SECRET_VARIABLES)

    def redact(self, text: str) -> str:
        """Given any text, return it with every known secret and secret shape masked."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        for shape, replacement in _PATTERNS:
            text = shape.sub(replacement, text)
        return text


SECRETS = SecretRegistry()


def redact(text: str) -> str:
    """Mask secrets in `text` with the process-wide registry."""
    return SECRETS.redact(text)


def redact_value(value: object) -> object:
    """Mask secrets in strings, also inside lists, tuples, sets and dicts (keys too); numbers
    and None stay; anything else becomes its text, masked."""
    if isinstance(value, str):
        return SECRETS.redact(value)
    if isinstance(value, dict):
        return {redact_value(str(key)): redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return SECRETS.redact(value.decode("utf-8", "backslashreplace"))
    return SECRETS.redact(str(value))
