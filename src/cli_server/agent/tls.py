"""Which CAs the agent trusts, and one-line explanations of a failed TLS handshake.

A custom bundle (``--ca-file``, else ``SSL_CERT_FILE``) replaces the default trust, as
curl's ``--cacert`` does; without one, OpenSSL's system store is used (or the platform's
``default_ca_file`` where OpenSSL has none to find). The same trust serves the registration
calls and the tunnel's WebSocket.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from attrs import evolve, field, frozen
from OpenSSL import SSL, crypto
from service_identity.exceptions import VerificationError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.python.failure import Failure

from cli_server.agent.errors import AgentError

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def read_bundle(path: Path, source: str) -> tuple[Certificate, ...]:
    """The certificates of a PEM bundle (unreadable or empty: AgentError)."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise AgentError(f"{source} {path}: cannot read it ({e.strerror})") from None
    certificates = []
    for block in _PEM.findall(text):
        try:
            certificates.append(Certificate.loadPEM(block))
        except (SSL.Error, crypto.Error, ValueError):
            raise AgentError(f"{source} {path}: a certificate in it is damaged") from None
    if not certificates:
        raise AgentError(f"{source} {path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    return tuple(certificates)


@frozen
class Trust:
    """The CAs that may sign the server's certificate."""

    ca_file: Path | None = None
    source: str = ""  # what named ca_file: "--ca-file", "SSL_CERT_FILE" or "" (the default)
    _certificates: tuple[Certificate, ...] = field(default=(), repr=False, eq=False)
    # the system's store as DER certificates, where OpenSSL cannot read it itself (Windows)
    _store: Callable[[], list[bytes]] | None = field(default=None, repr=False, eq=False)

    @classmethod
    def choose(
        cls,
        ca_file: str | None,
        environ: Mapping[str, str],
        default: Path | None = None,
        store: Callable[[], list[bytes]] | None = None,
    ) -> Trust:
        """``--ca-file``, else ``SSL_CERT_FILE``, else ``default``, else ``store``, else
        OpenSSL's own default paths."""
        if ca_file:
            return cls(Path(ca_file).expanduser(), "--ca-file")
        if environ.get("SSL_CERT_FILE"):
            return cls(Path(environ["SSL_CERT_FILE"]), "SSL_CERT_FILE")
        if default is not None:
            return cls(default, "the default CA bundle")
        return cls(store=store)

    @property
    def certificates(self) -> tuple[Certificate, ...]:
        """The CA certificates read (none until ``read``, nor for OpenSSL's defaults)."""
        return self._certificates

    @property
    def custom(self) -> bool:
        """Whether connections need this trust rather than OpenSSL's default paths."""
        return self.ca_file is not None or self._store is not None

    def read(self) -> Trust:
        """This trust with its certificates loaded (before dialling an https server, so a
        wrong bundle stops the agent with one line rather than failing every attempt)."""
        if self._certificates:
            return self
        if self.ca_file is not None:
            return evolve(self, certificates=read_bundle(self.ca_file, self.source))
        if self._store is not None:
            loaded = []
            for der in self._store():
                try:
                    loaded.append(Certificate.load(der, crypto.FILETYPE_ASN1))
                except (crypto.Error, ValueError):
                    continue  # (a store may hold what OpenSSL cannot parse; skip it)
            return evolve(self, certificates=tuple(loaded), source="the system's store")
        return self

    def for_host(self, host: str) -> IOpenSSLClientConnectionCreator:
        if not self._certificates:
            return optionsForClientTLS(host)
        root = trustRootFromCertificates(list(self._certificates))
        return optionsForClientTLS(host, trustRoot=root)

    def hint(self) -> str:
        if self.ca_file is None:
            return (
                "if the server uses a private CA, pass --ca-file with that CA's PEM file "
                "(or set SSL_CERT_FILE)"
            )
        return f"check that {self.ca_file} ({self.source}) holds the CA that signed it"


def causes(error: BaseException) -> Iterator[BaseException]:
    """An error and those it wraps (treq's ResponseNeverReceived and friends keep a list)."""
    yield error
    for reason in getattr(error, "reasons", None) or []:
        if isinstance(reason, Failure) and reason.value is not None:
            yield from causes(reason.value)


def explain_tls(error: BaseException, host: str, trust: Trust) -> str | None:
    """One line saying what went wrong in a TLS handshake with ``host`` and what to try, or
    None if ``error`` is not about TLS."""
    for cause in causes(error):
        if isinstance(cause, VerificationError):
            return (
                f"the server's certificate is not valid for the host name {host!r}: use the "
                "name the certificate was made for in --server (an IP address works only if "
                "the certificate lists it)"
            )
        if isinstance(cause, SSL.Error):
            said = " ".join(str(part) for part in _flat(cause.args))
            if "certificate verify failed" in said:
                return (
                    f"the server's certificate (at {host}) is not signed by a CA this agent "
                    f"trusts; {trust.hint()}"
                )
            if "wrong version number" in said or "packet length too long" in said:
                return f"{host} did not answer TLS: does --server start with http:// there?"
            return f"the TLS handshake with {host} failed ({said or type(cause).__name__})"
    return None


def _flat(value: object) -> Iterator[object]:
    # (pyOpenSSL's errors are lists of (library, function, reason) tuples)
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flat(item)
    elif value:
        yield value
