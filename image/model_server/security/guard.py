"""The one check every entry point runs before any handler: which scope a path needs, who the caller is, and
whether it may. HTTP (both doors of the fast path and the Flask views) calls ``Guard.check``; the audit log
records its answer.

Health endpoints stay open (kubelet probes carry no credentials); /metrics needs the ``metrics`` scope;
a model's routes (V1, V2 inference, metadata, readiness, explain, and /predict and /openapi.json for the
served model) need the model's name or ``*``; everything else (/v2, /v1/models, unknown paths) needs a
known caller of any scope, so an anonymous client learns nothing, not even which paths exist.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ConfigError, Settings
from ..errors import Forbidden, InvalidToken, Unauthorized
from .files import Reloading
from .identity import (
    METRICS,
    Caller,
    JwksSource,
    ServiceAccountTokens,
    TokenTable,
    certificate_names,
    looks_like_jwt,
    parse_certificate_names,
    parse_service_accounts,
)

OPEN = None  # the scope of a path anyone may call
ANY_CALLER = ""  # the scope of a path any known caller may call
_VERIFIED_CACHE = 1024  # ServiceAccount tokens remembered once verified, until they expire


def scope_of(path: str, served: str) -> str | None:
    """The scope ``path`` needs: OPEN, ANY_CALLER, METRICS, or a model's name (``served``: the model this
    server serves, which /predict and /openapi.json are about)."""
    if path.startswith("/v2/health/"):
        return OPEN
    if path == "/metrics":
        return METRICS
    if path in ("/predict", "/openapi.json"):
        return served or ANY_CALLER
    for prefix in ("/v2/models/", "/v1/models/"):
        if path.startswith(prefix):
            name = path[len(prefix) :].split("/", 1)[0].split(":", 1)[0]
            return name or ANY_CALLER
    return ANY_CALLER


class Guard:
    """Who may call what, from the settings; disabled (everything open) when no identity source is set."""

    def __init__(
        self,
        tokens: Reloading[TokenTable] | None = None,
        service_accounts: ServiceAccountTokens | None = None,
        certificates: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.tokens = tokens
        self.service_accounts = service_accounts
        self.certificates = dict(certificates or {})
        self.enabled = bool(tokens or service_accounts or self.certificates)
        self._verified: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        """The guard the settings describe; ConfigError (naming the file and line) for anything unusable."""
        tokens = None
        if settings.auth_tokens_file:
            paths = tuple(part.strip() for part in settings.auth_tokens_file.split(",") if part.strip())
            tokens = Reloading(paths, lambda: TokenTable.read_all(paths), _tokens_reloaded, _tokens_refused)
        accounts = None
        if settings.auth_service_accounts:
            keys = JwksSource(
                settings.auth_jwks_file,
                settings.auth_jwks_url,
                settings.auth_jwks_ca_file,
                settings.auth_jwks_token_file,
            )
            mapping = parse_service_accounts(settings.auth_service_accounts)
            accounts = ServiceAccountTokens(mapping, keys, settings.auth_issuer, settings.auth_audience)
        elif settings.auth_jwks_file or settings.auth_jwks_url:
            raise ConfigError("MODEL_SERVER_AUTH_JWKS_* is set but MODEL_SERVER_AUTH_SERVICE_ACCOUNTS lists no account")
        certificates = parse_certificate_names(settings.auth_client_certificates)
        if certificates and not settings.tls_client_ca_file:
            raise ConfigError(
                "MODEL_SERVER_AUTH_CLIENT_CERTIFICATES needs MODEL_SERVER_TLS_CLIENT_CA_FILE: without mutual TLS "
                "no client presents a certificate"
            )
        return cls(tokens, accounts, certificates)

    def refresh(self) -> None:
        """Look at the tokens file now (the worker does, every heartbeat)."""
        if self.tokens is not None:
            self.tokens.current()

    def check(
        self,
        path: str,
        authorization: str | None,
        peer_certificate: Callable[[], Mapping[str, Any] | None],
        served: str,
    ) -> tuple[Caller | None, str]:
        """(the caller, the model the request is about) when it may go on; Unauthorized or Forbidden (both
        ClientErrors) otherwise. The caller is None on open paths and while the guard is disabled."""
        scope = scope_of(path, served)
        model = scope if scope and scope != METRICS else ""
        if not self.enabled or scope is OPEN:
            return None, model
        try:
            caller = self.identify(authorization, peer_certificate)
        except Unauthorized as exc:
            exc.model = model
            raise
        if scope != ANY_CALLER and not caller.may(scope):
            what = "/metrics" if scope == METRICS else f"model {scope!r}"
            refused = Forbidden(f"forbidden: caller {caller.id!r} may not use {what}")
            refused.caller, refused.model = caller.id, model
            raise refused
        return caller, model

    def identify(self, authorization: str | None, peer_certificate: Callable[[], Mapping[str, Any] | None]) -> Caller:
        """The caller the request's credentials name; Unauthorized when there are none, InvalidToken when a
        token is not one the server knows. Never echoes the credential."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized("unauthorized: the Authorization header must be 'Bearer <token>'")
            if self.service_accounts is not None and looks_like_jwt(token):
                return self._service_account(token)
            table = self.tokens.current() if self.tokens is not None else None
            caller = table.caller(token) if table is not None else None
            if caller is None:
                raise InvalidToken("unauthorized: the bearer token is not valid")
            return caller
        if self.certificates:
            peer = peer_certificate()
            if peer:
                for name in certificate_names(peer):
                    scopes = self.certificates.get(name)
                    if scopes is not None:
                        return Caller(f"certificate:{name}", scopes)
        raise Unauthorized("unauthorized: this endpoint needs a bearer token (Authorization: Bearer <token>)")

    def _service_account(self, token: str) -> Caller:
        assert self.service_accounts is not None
        key = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(key)
        now = time.time()
        if cached is not None and cached[1] > now:
            self._verified.move_to_end(key)
            return cached[0]
        caller, why, expires = self.service_accounts.caller(token)
        if caller is None:
            raise InvalidToken(f"unauthorized: the ServiceAccount token is {why}")
        self._verified[key] = (caller, expires)
        if len(self._verified) > _VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return caller


log = logging.getLogger("model_server.auth")


def _tokens_reloaded(table: TokenTable) -> None:
    log.info("tokens file reloaded", extra={"callers": sorted(caller.id for _, caller in table.entries)})


def _tokens_refused(exc: Exception) -> None:
    log.error("tokens file changed but cannot be used; keeping the previous: %s", exc)
