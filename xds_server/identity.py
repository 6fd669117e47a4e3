"""Who an xDS stream is, and the secrets it may have.

A stream presents a token (`xds-server token`) in its gRPC metadata. A valid one binds
the stream to its namespace and service account: node metadata claiming another
identity is refused, and so is a second live stream for the same node id with another
identity. A bound stream gets Istio's two secrets over SDS on its ADS stream: `default`
(its key and certificate for spiffe://<trust domain>/ns/<ns>/sa/<sa>) and `ROOTCA` (the
mesh root), renewed at half their lifetime. A stream without a token gets no secret,
and none at all when the server requires tokens.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from translators import model
from translators.resources import ResourceSet, pack
from xds_server import tokens
from xds_server.ca import WORKLOAD_LIFETIME, CertificateAuthority, Issued

log = logging.getLogger(__name__)
DEFAULT_SECRET, ROOT_SECRET = "default", "ROOTCA"  # Istio's SDS resource names
# One signing thread: it signs about 10,000 certificates a second, and more threads
# contending for the interpreter lock delay the event loop (2000 sidecars at once: a
# 64 ms stall with the default pool's threads, measured with bench/certificates.py).
_SIGNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signer")


class StreamRefused(PermissionError):
    """The stream may not speak for the workload it claims; the message says why."""


def secret_resources(issued: Issued, root_pem: bytes) -> ResourceSet:
    """`default` and `ROOTCA`, packed as SDS resources."""
    default = secret_pb2.Secret(name=DEFAULT_SECRET)
    default.tls_certificate.certificate_chain.inline_bytes = issued.chain_pem
    default.tls_certificate.private_key.inline_bytes = issued.key_pem
    root = secret_pb2.Secret(name=ROOT_SECRET)
    root.validation_context.trusted_ca.inline_bytes = root_pem
    return ResourceSet(
        {DEFAULT_SECRET: pack(DEFAULT_SECRET, default), ROOT_SECRET: pack(ROOT_SECRET, root)}
    )


@dataclass
class IdentityService:
    ca: CertificateAuthority
    token_key: bytes
    require_tokens: bool = False
    lifetime: datetime.timedelta = WORKLOAD_LIFETIME
    key_type: str = "ecdsa"
    trust_domain: Callable[[], str] = lambda: "cluster.local"  # the mesh config's, live
    # node id -> (identity, live streams bound to it)
    _bound: dict[str, tuple[tuple[str, str], int]] = field(default_factory=dict)
    issued: Counter = field(default_factory=Counter)
    # node id -> what may be shown of its current certificate
    current: dict[str, Issued] = field(default_factory=dict)

    def authorize(self, metadata, proxy: model.Proxy) -> tokens.Identity | None:
        """The identity this stream is bound to (None: no token, no secrets); raises
        StreamRefused when it must not go on."""
        token = tokens.from_metadata(metadata)
        if token is None:
            if self.require_tokens:
                raise StreamRefused("this server requires a token (xds-server token)")
            return None
        try:
            identity = tokens.verify(self.token_key, token)
        except tokens.TokenError as exc:
            raise StreamRefused(f"token refused: {exc}") from None
        claimed = (proxy.namespace, proxy.service_account)
        granted = (identity.namespace, identity.service_account)
        if claimed != granted:
            raise StreamRefused(
                f"node {proxy.node_id} claims ns/{claimed[0]}/sa/{claimed[1]}, its token "
                f"grants ns/{granted[0]}/sa/{granted[1]}"
            )
        bound = self._bound.get(proxy.node_id)
        if bound is not None and bound[0] != granted:
            raise StreamRefused(f"node id {proxy.node_id} is connected with another identity")
        self._bound[proxy.node_id] = (granted, (bound[1] if bound else 0) + 1)
        return identity

    def release(self, node_id: str, identity: tokens.Identity | None) -> None:
        """A stream bound by `authorize` ended."""
        if identity is None:
            return
        bound = self._bound.get(node_id)
        if bound is None:
            return
        if bound[1] <= 1:
            del self._bound[node_id]
            self.current.pop(node_id, None)
        else:
            self._bound[node_id] = (bound[0], bound[1] - 1)

    async def keep_secrets(
        self, node_id: str, identity: tokens.Identity, deliver: Callable[[ResourceSet], None]
    ) -> None:
        """Issue the stream its secrets, and again at half their lifetime, until cancelled
        (the stream ended). Signing runs in a thread: the event loop keeps serving.
        Renewals are spread over the last tenth before half the lifetime, so that
        sidecars that connected together do not all renew together."""
        loop = asyncio.get_running_loop()
        while True:
            issued = await loop.run_in_executor(
                _SIGNER,
                functools.partial(
                    self.ca.issue,
                    identity.namespace,
                    identity.service_account,
                    self.lifetime,
                    self.key_type,
                    self.trust_domain(),
                ),
            )
            self.issued[node_id] += 1
            self.current[node_id] = issued
            log.info("issued %r to %s", issued, node_id)
            deliver(secret_resources(issued, self.ca.root_pem))
            half = self.lifetime.total_seconds() / 2
            await asyncio.sleep(max(1.0, half * (1 - 0.1 * random.random())))
