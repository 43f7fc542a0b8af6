"""Who is calling, and what they may call: bearer tokens by digest, Kubernetes ServiceAccount tokens, client
certificates.

A scope is a model's name, ``*`` for every model, or ``metrics`` for /metrics (``*`` does not include
it: a caller that may predict need not read the server's internals). Three kinds of identity:

* **Tokens** (MODEL_SERVER_AUTH_TOKENS_FILE, a mounted Secret): one line per caller,
  ``<id> sha256:<hex digest of the token> <scope>,<scope>``. Only digests are stored; a presented
  token's digest is compared with every line's in constant time. The file is re-read when it changes:
  add the new token's line, move the caller to it, remove the old line.
* **Kubernetes ServiceAccounts** (MODEL_SERVER_AUTH_SERVICE_ACCOUNTS): a pod's projected token,
  audience-bound and short-lived, verified offline against the API server's published keys (a JWKS
  file or URL) with PyJWT; ``namespace/name`` maps to scopes. No shared secret at all.
* **Client certificates** (MODEL_SERVER_AUTH_CLIENT_CERTIFICATES): with mutual TLS, a certificate
  whose subject CN or a DNS/URI name in it is listed stands in for a token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .files import Reloading

log = logging.getLogger("model_server.auth")

METRICS = "metrics"
ALL_MODELS = "*"
_ID = re.compile(r"^[A-Za-z0-9._:@/+-]{1,128}$")
_SCOPE = re.compile(r"^(\*|[^\s,:/]{1,253})$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_SERVICE_ACCOUNT = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$")


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its id as the audit log shows it, and its scopes."""

    id: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or (scope != METRICS and ALL_MODELS in self.scopes)


def parse_scopes(text: str, where: str) -> frozenset[str]:
    scopes = [part.strip() for part in text.split(",") if part.strip()]
    bad = [scope for scope in scopes if not _SCOPE.match(scope)]
    if not scopes or bad:
        raise ConfigError(f"{where}: scopes {text!r} must be a comma list of model names, '*' or 'metrics'")
    return frozenset(scopes)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# ---- tokens ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenTable:
    """The tokens file as read: (digest, caller) per line."""

    entries: tuple[tuple[bytes, Caller], ...]

    @classmethod
    def read(cls, path: str) -> TokenTable:
        """Parse ``path``; ConfigError naming the file and line of anything malformed."""
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"MODEL_SERVER_AUTH_TOKENS_FILE={path} cannot be read: {exc}") from None
        return cls.read_lines(text.splitlines(), path)

    @classmethod
    def read_lines(cls, lines: Iterable[str], source: str) -> TokenTable:
        """Parse the tokens file's ``lines``; ConfigError naming ``source`` and the line."""
        entries: list[tuple[bytes, Caller]] = []
        ids: set[str] = set()
        digests: set[bytes] = set()
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}:{number}"
            parts = line.split()
            if len(parts) != 3:
                raise ConfigError(f"{where}: expected '<id> sha256:<hex digest> <scopes>', found {len(parts)} fields")
            caller_id, digest_text, scopes = parts
            if not _ID.match(caller_id):
                raise ConfigError(f"{where}: id {caller_id!r} must be 1-128 letters, digits or ._:@/+-")
            match = _DIGEST.match(digest_text)
            if match is None:
                # The field may be a token pasted by mistake: never echo it.
                raise ConfigError(f"{where}: the second field must be sha256: and 64 lower-case hex digits")
            digest = bytes.fromhex(match.group(1))
            if caller_id in ids:
                raise ConfigError(f"{where}: id {caller_id!r} appears twice")
            if digest in digests:
                raise ConfigError(f"{where}: this digest is already another line's: one token, one caller")
            ids.add(caller_id)
            digests.add(digest)
            entries.append((digest, Caller(caller_id, parse_scopes(scopes, where))))
        return cls(tuple(entries))

    @classmethod
    def read_all(cls, paths: Iterable[str]) -> TokenTable:
        """Several tokens files as one (the operator's, and those the chart makes for its own test Pod and
        Prometheus); an id or a token in two of them is refused, naming both."""
        entries: list[tuple[bytes, Caller]] = []
        seen: dict[str, str] = {}
        for path in paths:
            for digest, caller in cls.read(path).entries:
                for key, what in ((caller.id, f"id {caller.id!r}"), (digest.hex(), "a token")):
                    if key in seen:
                        raise ConfigError(f"{what} is in both {seen[key]} and {path}: one token, one caller")
                    seen[key] = path
                entries.append((digest, caller))
        return cls(tuple(entries))

    def caller(self, token: str) -> Caller | None:
        """The caller whose digest the token has. Every line is compared, in constant time each, whether or
        not one already matched: the time taken says nothing about which digests exist."""
        presented = token_digest(token)
        found = None
        for digest, caller in self.entries:
            if hmac.compare_digest(presented, digest):
                found = caller
        return found


# ---- Kubernetes ServiceAccount tokens -------------------------------------------------------------------


def parse_service_accounts(text: str, env: str = "MODEL_SERVER_AUTH_SERVICE_ACCOUNTS") -> dict[str, frozenset[str]]:
    """``namespace/name=scope,scope;...`` -> {"system:serviceaccount:namespace:name": scopes}."""
    found: dict[str, frozenset[str]] = {}
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        account, sep, scopes = item.partition("=")
        match = _SERVICE_ACCOUNT.match(account.strip())
        if not sep or match is None:
            raise ConfigError(f"{env}: {item!r} must be namespace/serviceaccount=scope,scope")
        subject = f"system:serviceaccount:{match.group(1)}:{match.group(3)}"
        if subject in found:
            raise ConfigError(f"{env}: {account.strip()} is listed twice")
        found[subject] = parse_scopes(scopes, f"{env} ({account.strip()})")
    return found


class JwksSource:
    """The API server's signing keys: a JWKS file (re-read when it changes) or URL (fetched, cached, refetched
    every ``refresh_s`` and, at most once per ``min_refetch_s``, when a token names a key it lacks)."""

    def __init__(
        self,
        file: str = "",
        url: str = "",
        ca_file: str = "",
        token_file: str = "",
        refresh_s: float = 300.0,
        min_refetch_s: float = 30.0,
    ) -> None:
        if bool(file) == bool(url):
            raise ConfigError("ServiceAccount tokens need exactly one of MODEL_SERVER_AUTH_JWKS_FILE or _JWKS_URL")
        self.file, self.url, self.ca_file, self.token_file = file, url, ca_file, token_file
        self.refresh_s, self.min_refetch_s = refresh_s, min_refetch_s
        self._reloading: Reloading[dict[str, Any]] | None = None
        self._keys: dict[str, Any] = {}
        self._fetched = float("-inf")
        if file:
            self._reloading = Reloading(
                (file,), lambda: _parse_jwks(Path(file).read_bytes(), file), on_error=_jwks_error
            )
        else:
            self._keys = self._fetch()  # the server refuses to start without the keys

    def key(self, kid: str | None) -> Any:
        """The public key for ``kid`` (None: the only key, when there is one), or None."""
        keys = self._reloading.current() if self._reloading is not None else self._url_keys(kid)
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    def _url_keys(self, kid: str | None) -> dict[str, Any]:
        age = time.monotonic() - self._fetched
        if age >= self.refresh_s or (kid not in self._keys and age >= self.min_refetch_s):
            try:
                self._keys = self._fetch()
            except ConfigError as exc:
                self._fetched = time.monotonic()  # try again later; keep what was known
                _jwks_error(exc)
        return self._keys

    def _fetch(self) -> dict[str, Any]:
        import ssl

        headers = {"Accept": "application/json"}
        if self.token_file:
            headers["Authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
        context = ssl.create_default_context(cafile=self.ca_file or None)
        request = urllib.request.Request(self.url, headers=headers)  # noqa: S310 - an https URL the operator set
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
                body = response.read(1 << 20)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"MODEL_SERVER_AUTH_JWKS_URL={self.url} could not be fetched: {exc}") from None
        self._fetched = time.monotonic()
        return _parse_jwks(body, self.url)


def _jwks_error(exc: Exception) -> None:
    log.warning("ServiceAccount signing keys could not be refreshed; keeping the previous ones: %s", exc)


def _parse_jwks(raw: bytes, where: str) -> dict[str, Any]:
    from jwt import PyJWKSet
    from jwt.exceptions import PyJWKSetError

    try:
        keys = PyJWKSet.from_dict(json.loads(raw))
    except (ValueError, PyJWKSetError) as exc:
        raise ConfigError(f"{where} is not a JWKS with usable keys: {exc}") from None
    return {key.key_id or "": key for key in keys.keys}


class ServiceAccountTokens:
    """Projected ServiceAccount tokens: signature, issuer, audience and expiry checked; the subject mapped."""

    ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256")

    def __init__(self, accounts: Mapping[str, frozenset[str]], keys: JwksSource, issuer: str, audience: str) -> None:
        self.accounts, self.keys, self.issuer, self.audience = dict(accounts), keys, issuer, audience

    def caller(self, token: str) -> tuple[Caller | None, str, float]:
        """(the caller, "", when the token expires) for a valid token; (None, why, 0) otherwise. A valid token
        of an account not listed is a caller with no scopes: it is known, just not allowed (403, not 401)."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.key(header.get("kid"))
            if key is None:
                return None, "signed by a key the server does not know", 0.0
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(self.ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                leeway=30,
            )
        except jwt.InvalidAudienceError:
            return None, f"not issued for the audience {self.audience!r}", 0.0
        except jwt.ExpiredSignatureError:
            return None, "expired", 0.0
        except jwt.PyJWTError as exc:
            return None, f"not a valid ServiceAccount token ({type(exc).__name__})", 0.0
        subject = str(claims["sub"])
        return Caller(subject, self.accounts.get(subject, frozenset())), "", float(claims["exp"])


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


# ---- client certificates --------------------------------------------------------------------------------


def parse_certificate_names(text: str, env: str = "MODEL_SERVER_AUTH_CLIENT_CERTIFICATES") -> dict[str, frozenset[str]]:
    """``name=scope,scope;...``: a client certificate whose subject CN, or a DNS or URI name in it, is
    ``name`` gets those scopes."""
    found: dict[str, frozenset[str]] = {}
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        name, sep, scopes = item.rpartition("=")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name):
            raise ConfigError(f"{env}: {item!r} must be name=scope,scope (a certificate's CN, DNS or URI name)")
        if name in found:
            raise ConfigError(f"{env}: {name} is listed twice")
        found[name] = parse_scopes(scopes, f"{env} ({name})")
    return found


def certificate_names(peer: Mapping[str, Any]) -> Iterable[str]:
    """The subject CN and the DNS and URI names of a certificate as ``ssl.SSLSocket.getpeercert()`` gives it."""
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                yield value
    for kind, value in peer.get("subjectAltName", ()):
        if kind in ("DNS", "URI"):
            yield value
