"""The server's TLS: modern defaults, client certificates where a client CA is set, certificates reloaded
from their files without a restart.

Two contexts from the same files: the main port's, which requires a client certificate signed by
MODEL_SERVER_TLS_CLIENT_CA_FILE when one is set (mutual TLS: a client without one is refused during
the handshake), and the health port's, which never asks for one (kubelet's HTTPS probes present
none; /metrics there is guarded by a token instead). Each process builds its own contexts (a gevent
worker's must be built after it patched the ssl module) and checks the files at most once a second:
a renewed certificate is served to new connections within a second or two of kubelet swapping the
Secret, open connections keep the one they shook hands with, and a bad update keeps the previous
certificate and is logged once.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, Settings
from .files import Reloading

log = logging.getLogger("model_server.tls")

# TLS 1.2's forward-secret AEAD suites (TLS 1.3's are all of that kind and on by default): what Mozilla's
# "intermediate" profile allows, no CBC, no RSA key exchange, no SHA-1 MACs.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
CERT_ENV, KEY_ENV, CA_ENV = "MODEL_SERVER_TLS_CERT_FILE", "MODEL_SERVER_TLS_KEY_FILE", "MODEL_SERVER_TLS_CLIENT_CA_FILE"


class TlsError(ConfigError):
    """A certificate, key or CA file the server cannot use; the message names the file and why."""


@dataclass(frozen=True)
class Certificate:
    """What the logs say of a certificate: enough to tell a renewal happened, nothing secret."""

    subject: str
    serial: str
    not_after: str


def _read(env: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{env}={path} cannot be read: {exc.strerror or exc}") from None


def check_files(cert: str, key: str, client_ca: str = "") -> Certificate:
    """The certificate the files hold, or TlsError naming the file that is wrong: not PEM, an encrypted key,
    a key that does not match the certificate, a CA file without a certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_pem, key_pem = _read(CERT_ENV, cert), _read(KEY_ENV, key)
    ca_pem = _read(CA_ENV, client_ca) if client_ca else b""
    try:
        certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as exc:
        raise TlsError(f"{CERT_ENV}={cert} is not a PEM certificate: {exc}") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsError(f"{KEY_ENV}={key} is encrypted; the server needs the key unencrypted") from None
    except ValueError as exc:
        raise TlsError(f"{KEY_ENV}={key} is not a PEM private key: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(der, spki):
        raise TlsError(f"{KEY_ENV}={key} does not match the certificate in {CERT_ENV}={cert}")
    if client_ca:
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError as exc:
            raise TlsError(f"{CA_ENV}={client_ca} holds no PEM CA certificate: {exc}") from None
    return Certificate(
        certificate.subject.rfc4514_string(),
        format(certificate.serial_number, "x"),
        certificate.not_valid_after_utc.isoformat(),
    )


def context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """A server context: TLS 1.2 or later, forward-secret AEAD suites, no compression or renegotiation; with
    ``client_ca``, a client certificate it signed is required."""
    check_files(cert, key, client_ca)
    built = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    built.minimum_version = ssl.TLSVersion.TLSv1_2
    built.set_ciphers(TLS12_CIPHERS)
    built.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    built.load_cert_chain(cert, key)
    if client_ca:
        built.load_verify_locations(cafile=client_ca)
        built.verify_mode = ssl.CERT_REQUIRED
    return built


class ServerTls:
    """The main and health ports' contexts, each process its own, reloaded when the files change."""

    def __init__(self, cert: str, key: str, client_ca: str = "") -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.certificate = check_files(cert, key, client_ca)  # a bad file stops the server here, at start
        self._pid = -1
        self._main: Reloading[ssl.SSLContext] | None = None
        self._health: Reloading[ssl.SSLContext] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTls | None:
        if not settings.tls_cert_file:
            return None
        return cls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)

    def refresh(self) -> None:
        """Look at the files now (the worker does, every heartbeat): every worker then serves every renewal,
        not only the ones that happen to arrive while it accepts connections."""
        main, health = self._contexts()
        main.current()
        health.current()

    def main_context(self) -> ssl.SSLContext:
        return self._contexts()[0].current()

    def health_context(self) -> ssl.SSLContext:
        return self._contexts()[1].current()

    def _contexts(self) -> tuple[Reloading[ssl.SSLContext], Reloading[ssl.SSLContext]]:
        if self._pid != os.getpid() or self._main is None or self._health is None:
            self._pid = os.getpid()
            files = (self.cert, self.key, *((self.client_ca,) if self.client_ca else ()))
            self._main = Reloading(
                files, lambda: context(self.cert, self.key, self.client_ca), self._changed, self._refused
            )
            self._health = Reloading(files, lambda: context(self.cert, self.key))
        return self._main, self._health

    def _changed(self, _: ssl.SSLContext) -> None:
        previous, self.certificate = self.certificate, check_files(self.cert, self.key, self.client_ca)
        if self._health is not None:
            self._health.refresh()
        log.info(
            "TLS certificate reloaded",
            extra={"subject": self.certificate.subject, "serial": self.certificate.serial,
                   "not_after": self.certificate.not_after, "previous_serial": previous.serial},
        )  # fmt: skip

    def _refused(self, exc: Exception) -> None:
        log.warning("TLS files changed but cannot be used; serving the previous certificate: %s", exc)
