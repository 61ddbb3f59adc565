"""Ops users of the console, from SF_BRIDGE_OPS_USERS: `name:secret` pairs separated by commas.

A secret is given in clear or, better, as a PBKDF2 hash made by
`python -m sf_bridge.console.users` (`pbkdf2_sha256$<iterations>$<salt>$<hash>`). Every
comparison takes the same time whether the name, the secret or both are wrong.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import secrets
import sys
from dataclasses import dataclass

from sf_bridge.errors import ConfigurationError

HASH_SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000
USERS_VARIABLE = "SF_BRIDGE_OPS_USERS"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(
    secret: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """The PBKDF2-SHA256 form of `secret` to put in SF_BRIDGE_OPS_USERS instead of the secret."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"{HASH_SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class _Credential:
    hashed: bool
    value: str  # the clear secret, or the hash string

    def matches(self, given: str) -> bool:
        if not self.hashed:
            # Digests have one length: compare_digest then takes the same time for any input.
            return hmac.compare_digest(
                hashlib.sha256(given.encode()).digest(),
                hashlib.sha256(self.value.encode()).digest(),
            )
        _scheme, iterations, salt, expected = self.value.split("$")
        digest = hashlib.pbkdf2_hmac("sha256", given.encode(), _unb64(salt), int(iterations))
        return hmac.compare_digest(digest, _unb64(expected))


# Checked when the name is unknown, so an unknown name costs what a wrong secret costs.
_DUMMY_HASHED = _Credential(
    True, f"{HASH_SCHEME}${DEFAULT_ITERATIONS}${_b64(bytes(16))}${_b64(bytes(32))}"
)
_DUMMY_CLEAR = _Credential(False, secrets.token_urlsafe(24))


def _parse_credential(name: str, secret: str) -> _Credential:
    if not secret.startswith(HASH_SCHEME + "$"):
        return _Credential(False, secret)
    parts = secret.split("$")
    try:
        ok = len(parts) == 4 and int(parts[1]) > 0 and _unb64(parts[2]) and _unb64(parts[3])
    except ValueError:
        ok = False
    if not ok:
        raise ConfigurationError(
            f"{USERS_VARIABLE}: the hashed secret of ops user {name!r} is malformed.",
            hint="make it again with `python -m sf_bridge.console.users` and paste the whole "
            "pbkdf2_sha256$... line.",
        )
    return _Credential(True, secret)


class OpsUsers:
    """The people who may sign in to the console."""

    def __init__(self, credentials: dict[str, _Credential]) -> None:
        self._credentials = credentials
        hashed = any(c.hashed for c in credentials.values())
        self._dummy = _DUMMY_HASHED if hashed else _DUMMY_CLEAR

    @classmethod
    def parse(cls, text: str | None) -> OpsUsers:
        """Reads `alice:secret,bob:pbkdf2_sha256$...`; a malformed entry is refused by its
        position (never by its secret)."""
        credentials: dict[str, _Credential] = {}
        for index, entry in enumerate((text or "").split(","), 1):
            entry = entry.strip()
            if not entry:
                continue
            name, sep, secret = entry.partition(":")
            name = name.strip()
            if not sep or not name or not secret:
                raise ConfigurationError(
                    f"{USERS_VARIABLE}: entry {index} is not `name:secret`.",
                    hint="write the users as name:secret pairs separated by commas, e.g. "
                    "alice:<secret>,bob:<secret> (secrets may be hashed, see docs/operations.md).",
                )
            if name in credentials:
                raise ConfigurationError(
                    f"{USERS_VARIABLE}: ops user {name!r} is listed twice.",
                    hint="keep one entry per user.",
                )
            credentials[name] = _parse_credential(name, secret)
        return cls(credentials)

    def __bool__(self) -> bool:
        return bool(self._credentials)

    def __len__(self) -> int:
        return len(self._credentials)

    def __contains__(self, name: object) -> bool:
        return name in self._credentials

    def authenticate(self, name: str, secret: str) -> bool:
        """Whether `name` and `secret` go together; as slow for an unknown name as for a
        wrong secret."""
        credential = self._credentials.get(name)
        matched = (credential or self._dummy).matches(secret)
        return credential is not None and matched


def main() -> None:
    """Prints the hashed form of a secret typed at the prompt (or piped on stdin)."""
    secret = (
        getpass.getpass("Secret: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    )
    if not secret:
        sys.exit("error: empty secret.")
    print(hash_secret(secret))


if __name__ == "__main__":
    main()
