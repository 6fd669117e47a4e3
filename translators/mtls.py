"""Mutual TLS between sidecars that hold their certificates (Istio's auto mTLS, with
PERMISSIVE inbound): the SDS secrets `default` and `ROOTCA` over ADS on both sides.

A client cluster picks TLS for an endpoint whose metadata says `tlsMode: istio` (a
sidecar that holds its certificate) and plaintext for any other. A server's inbound
listener reads the first bytes (tls_inspector): TLS with Istio's ALPN goes to a chain
that requires the client's certificate, anything else to the plaintext chain, so apps
without a sidecar still reach it; under STRICT (PeerAuthentication) plaintext is
refused. A plaintext client of a server-first protocol waits a second on the inspector.
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, struct_pb2

from translators.resources import to_any

TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"  # endpoint metadata namespace
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_SOCKET = "envoy.transport_sockets.raw_buffer"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
DEFAULT_SECRET, ROOT_SECRET = "default", "ROOTCA"
# What Istio's sidecars offer and accept for mutual TLS.
CLIENT_ALPN = ("istio-http/1.1", "istio")
SERVER_ALPN = ("istio-http/1.0", "istio-http/1.1", "istio-h2", "istio", "istio-peer-exchange")


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def common_context(alpn: tuple[str, ...]) -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds(DEFAULT_SECRET)],
        validation_context_sds_secret_config=sds(ROOT_SECRET),
        alpn_protocols=list(alpn),
    )


def san_matchers(names) -> list[common_pb2.SubjectAltNameMatcher]:
    """Names a peer's certificate must carry: a SPIFFE ID (any URI) as a URI name,
    anything else as a DNS name."""
    uri, dns = common_pb2.SubjectAltNameMatcher.URI, common_pb2.SubjectAltNameMatcher.DNS
    return [
        common_pb2.SubjectAltNameMatcher(
            san_type=uri if "://" in name else dns, matcher=string_pb2.StringMatcher(exact=name)
        )
        for name in names
    ]


def validate_peers(
    common: tls_pb2.CommonTlsContext, trusted: secret_pb2.SdsSecretConfig, names=()
) -> None:
    """Peers' certificates must chain to the SDS secret `trusted` and, when `names` are
    given, carry one of them (a combined validation context)."""
    common.ClearField("validation_context_sds_secret_config")
    if names:
        combined = common.combined_validation_context
        combined.validation_context_sds_secret_config.CopyFrom(trusted)
        combined.default_validation_context.match_typed_subject_alt_names.extend(
            san_matchers(names)
        )
    else:
        common.validation_context_sds_secret_config.CopyFrom(trusted)


def client_socket_matches() -> list[cluster_pb2.Cluster.TransportSocketMatch]:
    """TLS to endpoints that hold a certificate, plaintext to the others."""
    tls = base_pb2.TransportSocket(
        name=TLS_SOCKET,
        typed_config=to_any(
            tls_pb2.UpstreamTlsContext(common_tls_context=common_context(CLIENT_ALPN))
        ),
    )
    raw = base_pb2.TransportSocket(name=RAW_SOCKET, typed_config=to_any(raw_buffer_pb2.RawBuffer()))
    istio = struct_pb2.Struct()
    istio.update({"tlsMode": "istio"})
    return [
        cluster_pb2.Cluster.TransportSocketMatch(
            name="tlsMode-istio", match=istio, transport_socket=tls
        ),
        cluster_pb2.Cluster.TransportSocketMatch(
            name="tlsMode-disabled", match=struct_pb2.Struct(), transport_socket=raw
        ),
    ]


def server_socket() -> base_pb2.TransportSocket:
    """TLS that requires a client certificate from the mesh's root."""
    context = tls_pb2.DownstreamTlsContext(common_tls_context=common_context(SERVER_ALPN))
    context.require_client_certificate.value = True
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=to_any(context))


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name=TLS_INSPECTOR, typed_config=to_any(tls_inspector_pb2.TlsInspector())
    )


def mutual_tls_chain(
    chain: listener_components_pb2.FilterChain,
) -> listener_components_pb2.FilterChain:
    """`chain`'s filters for mutual TLS peers: Istio's ALPN over TLS, then TLS ended."""
    tls = listener_components_pb2.FilterChain()
    tls.CopyFrom(chain)
    tls.name = f"{chain.name}-mtls" if chain.name else "mtls"
    tls.filter_chain_match.transport_protocol = "tls"
    tls.filter_chain_match.application_protocols.extend(SERVER_ALPN)
    tls.transport_socket.CopyFrom(server_socket())
    return tls


def secure_inbound(
    listener,
    mode_of: Callable[[listener_components_pb2.FilterChain], str | None],
    bound: bool,
) -> None:
    """Apply each inbound chain's PeerAuthentication mode (mode_of; None: a chain that is
    not an app port's). PERMISSIVE, for a sidecar that holds its certificate: a mutual
    TLS twin before the plaintext chain. STRICT: the twin, and plaintext blackholed (a
    sidecar without a certificate then refuses everything: it fails closed). With a
    twin, the listener reads a client's first bytes (tls_inspector), at most a second,
    then takes the plaintext chain."""
    kept = list(listener.filter_chains)
    del listener.filter_chains[:]
    inspect = False
    for chain in kept:
        mode = mode_of(chain)
        if mode == "STRICT" or (mode == "PERMISSIVE" and bound):
            listener.filter_chains.append(mutual_tls_chain(chain))
            inspect = True
            if mode == "STRICT":
                chain = _refused(chain)
        listener.filter_chains.append(chain)
    if inspect:
        _inspect(listener)


def secure_passthrough(listener, mode: str, bound: bool) -> None:
    """The captured inbound listener's default chain (ports no service declares) under
    the workload's mode: a mutual TLS twin (matched without a port: declared ports'
    chains are more specific) and, under STRICT, plaintext refused."""
    if not (mode == "STRICT" or (mode == "PERMISSIVE" and bound)):
        return
    default = listener.default_filter_chain
    listener.filter_chains.append(mutual_tls_chain(default))
    if mode == "STRICT":
        listener.default_filter_chain.CopyFrom(_refused(default))
    _inspect(listener)


def _inspect(listener) -> None:
    """Read a client's first bytes (once per listener), at most a second, then go on."""
    if not any(f.name == TLS_INSPECTOR for f in listener.listener_filters):
        listener.listener_filters.append(tls_inspector())
        listener.listener_filters_timeout.CopyFrom(duration_pb2.Duration(seconds=1))
        listener.continue_on_listener_filters_timeout = True


BLACKHOLE = "BlackHoleCluster"


def _refused(chain: listener_components_pb2.FilterChain) -> listener_components_pb2.FilterChain:
    """`chain`'s match, for plaintext that STRICT refuses: to a cluster with no hosts."""
    refused = listener_components_pb2.FilterChain(name=f"{chain.name}-plaintext-refused")
    refused.filter_chain_match.CopyFrom(chain.filter_chain_match)
    refused.filters.append(
        listener_components_pb2.Filter(
            name="envoy.filters.network.tcp_proxy",
            typed_config=to_any(tcp_proxy_pb2.TcpProxy(stat_prefix=BLACKHOLE, cluster=BLACKHOLE)),
        )
    )
    return refused
