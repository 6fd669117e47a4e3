"""The server's own certificate for xDS over TLS (Istio's 15012), from the mesh CA.

Sidecars verify it with the mesh root and by the name `xds-server` (which every server
certificate carries, whatever address the sidecar dials), as Istio's verify istiod's
`istiod.istio-system.svc`. gRPC asks for the certificate at each handshake; a new one is
issued at half of the current one's lifetime, so the port never serves an expired one
and nothing is restarted.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import threading

import grpc

from xds_server.ca import CertificateAuthority, Issued

log = logging.getLogger(__name__)
SERVER_NAME = "xds-server"  # what bootstraps check (BootstrapOptions.xds_server_name)
DEFAULT_NAMES = (SERVER_NAME, "istiod", "istiod.istio-system.svc", "localhost")


def server_names(extra: tuple[str, ...] = ()) -> list[str]:
    names = [*DEFAULT_NAMES, socket.gethostname(), *extra]
    return list(dict.fromkeys(n for n in names if n and not _is_ip(n)))


def server_addresses(bind: str, extra: tuple[str, ...] = ()) -> list[str]:
    addresses = ["127.0.0.1", "::1", *(a for a in extra if _is_ip(a))]
    if _is_ip(bind) and not ipaddress.ip_address(bind).is_unspecified:
        addresses.append(bind)
    return list(dict.fromkeys(addresses))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ServerCertificate:
    """The current certificate of the TLS port, renewed at half its lifetime."""

    def __init__(
        self,
        ca: CertificateAuthority,
        names: list[str],
        addresses: list[str],
        lifetime: datetime.timedelta,
    ) -> None:
        self.ca, self.names, self.addresses, self.lifetime = ca, names, addresses, lifetime
        self._lock = threading.Lock()
        self.current = self._issue()

    def _issue(self) -> Issued:
        return self.ca.issue_server(self.names, self.addresses, self.lifetime)

    def _renew_at(self, issued: Issued) -> datetime.datetime:
        return issued.not_after - self.lifetime / 2  # not_before is back-dated

    def _config(self, issued: Issued) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(issued.key_pem, issued.chain_pem)])

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._config(self.current), self._fetch)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake (in its own threads): a new
        configuration when the certificate is due, else None (keep the current one)."""
        now = datetime.datetime.now(datetime.UTC)
        with self._lock:
            if now < self._renew_at(self.current):
                return None
            try:
                self.current = self._issue()
            except Exception:  # a handshake must not fail for it: the current one serves
                log.exception("renewing the xDS TLS certificate failed")
                return None
            log.info("xDS TLS certificate renewed: serial %x", self.current.serial)
            return self._config(self.current)
