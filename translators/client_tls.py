"""DestinationRule `tls` -> the upstream transport socket of a cluster (Istio's
applyUpstreamTLSSettings), in place of auto mTLS.

- DISABLE: plaintext, even to a workload whose sidecar holds a certificate.
- ISTIO_MUTUAL: mutual TLS with the mesh's SDS secrets (`default`, `ROOTCA`), to every
  endpoint. A sidecar without a certificate (no token) cannot speak it: its cluster
  stays as auto mTLS would make it (plaintext), as it could not present one anyway.
- SIMPLE: TLS, verifying the server with `caCertificates` (a file on the sidecar's
  machine) or, without it, the system's roots, unless `insecureSkipVerify`;
  `subjectAltNames` checks the server's names.
- MUTUAL: SIMPLE with the client certificate and key from files.

SNI: `sni` when given; else, for HTTP ports, the request's Host (Envoy's auto_sni, with
the server's certificate checked against it when no subjectAltNames are given), as
Istio does; else, for hosts not in the mesh's registry (DNS or static ServiceEntries),
the hostname.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

from protos import destination_rule_pb2 as dr_pb2
from translators import mtls
from translators.cluster_settings import HTTP_OPTIONS_KEY
from translators.resources import to_any

Mode = dr_pb2.ClientTLSSettings.TLSmode
UPSTREAM_TLS = "envoy.transport_sockets.tls"


def apply_client_tls(
    cluster: cluster_pb2.Cluster,
    tls: dr_pb2.ClientTLSSettings,
    http: bool,
    hostname: str | None,
    has_certificate: bool,
) -> None:
    """Set the cluster's transport socket from `tls`. `hostname` is the SNI of last
    resort (None for mesh services, whose clusters share bytes across hosts)."""
    if tls.mode == Mode.DISABLE:
        return
    if tls.mode == Mode.ISTIO_MUTUAL:
        if not has_certificate:
            return
        context = tls_pb2.UpstreamTlsContext(
            common_tls_context=mtls.common_context(mtls.CLIENT_ALPN), sni=tls.sni
        )
        mtls.validate_peers(
            context.common_tls_context, mtls.sds(mtls.ROOT_SECRET), tls.subject_alt_names
        )
        _set_socket(cluster, context)
        return
    context = tls_pb2.UpstreamTlsContext(sni=tls.sni)
    common = context.common_tls_context
    if tls.mode == Mode.MUTUAL:
        common.tls_certificates.add(
            certificate_chain=base_pb2.DataSource(filename=tls.client_certificate),
            private_key=base_pb2.DataSource(filename=tls.private_key),
        )
    skip = tls.HasField("insecure_skip_verify") and tls.insecure_skip_verify.value
    if not skip:
        validation = common.validation_context
        if tls.ca_certificates:
            validation.trusted_ca.filename = tls.ca_certificates
        else:
            validation.system_root_certs.SetInParent()
        if tls.ca_crl:
            validation.crl.filename = tls.ca_crl
        validation.match_typed_subject_alt_names.extend(mtls.san_matchers(tls.subject_alt_names))
    if not tls.sni:
        if http:
            _auto_sni(cluster, verify=not skip and not tls.subject_alt_names)
        elif hostname is not None and "*" not in hostname:
            context.sni = hostname
    _set_socket(cluster, context)


def _set_socket(cluster: cluster_pb2.Cluster, context: tls_pb2.UpstreamTlsContext) -> None:
    cluster.ClearField("transport_socket_matches")
    cluster.transport_socket.CopyFrom(
        base_pb2.TransportSocket(name=UPSTREAM_TLS, typed_config=to_any(context))
    )


def _auto_sni(cluster: cluster_pb2.Cluster, verify: bool) -> None:
    """SNI from each request's Host, kept in the cluster's HTTP protocol options."""
    options = hpo_pb2.HttpProtocolOptions()
    if HTTP_OPTIONS_KEY in cluster.typed_extension_protocol_options:
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].Unpack(options)
    else:  # Envoy wants a protocol choice once the options exist
        options.explicit_http_config.http_protocol_options.CopyFrom(
            protocol_pb2.Http1ProtocolOptions()
        )
    options.upstream_http_protocol_options.auto_sni = True
    options.upstream_http_protocol_options.auto_san_validation = verify
    cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(to_any(options))
