"""Certificates of our own, for the tests and the benchmark: a CA, server certificates for 127.0.0.1 or a
Service's names, client certificates, as PEM files; a directory updated as kubelet updates a mounted Secret.
Made with cryptography, the library the server itself uses."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path
    serial: int


class CA:
    """A certificate authority of the tests' own, writing what it makes under ``directory``."""

    def __init__(self, directory: Path, name: str = "model-server test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            # Key identifiers, as real CAs write them: strict verifiers (urllib3's) require them.
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert = directory / f"{name.replace(' ', '-')}.crt"
        self.cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, *, hosts: tuple[str, ...] = (), client: bool = False, uris: tuple[str, ...] = ()
    ) -> Pair:
        """A leaf certificate and its key, for a server (``hosts``: DNS names and IP addresses) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        names += [x509.UniformResourceIdentifier(uri) for uri in uris]
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        stem = self.directory / f"{name}-{certificate.serial_number:x}"
        cert, private = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return Pair(cert, private, certificate.serial_number)


class SecretDir:
    """A directory as kubelet mounts a Secret: files named through the ``..data`` symlink, and an update that
    writes a new timestamped directory and swaps the symlink in one rename (atomic for every reader)."""

    def __init__(self, directory: Path, files: dict[str, bytes]) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._version = 0
        self.update(files)
        for name in files:
            (directory / name).symlink_to(Path("..data") / name)

    def update(self, files: dict[str, bytes]) -> None:
        import os

        self._version += 1
        target = self.directory / f"..version-{self._version}"
        target.mkdir()
        for name, content in files.items():
            (target / name).write_bytes(content)
        link = self.directory / "..data_tmp"
        link.symlink_to(target.name)
        os.replace(link, self.directory / "..data")

    def path(self, name: str) -> str:
        return str(self.directory / name)


def served_serial(host: str, port: int, ca: Path, client: Pair | None = None) -> int:
    """The serial number of the certificate a fresh TLS connection to host:port is served."""
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
