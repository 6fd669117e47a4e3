"""DestinationRule `tls` -> a cluster's transport socket, Istio's samples loading as they
are, and the checks of each mode."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

from tests.helpers import config_from, plain_service_yaml
from tests.test_traffic_translation import CALLER, OPTIONS, WORKLOADS, cluster, dr
from translators.resources import CLUSTER
from translators.snapshot import World, translate
from xds_server.config.loader import parse_file

SAMPLES = Path(__file__).resolve().parent / "istio_samples"
REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


def _cluster(policy: str, mtls: bool = True, name: str = REVIEWS, *extra: str):
    caller = dataclasses.replace(CALLER, mtls=mtls)
    config = config_from(plain_service_yaml("reviews"), dr(policy), *extra)
    return cluster(translate(World(config, WORKLOADS), caller), name)


def _context(found) -> tls_pb2.UpstreamTlsContext:
    context = tls_pb2.UpstreamTlsContext()
    found.transport_socket.typed_config.Unpack(context)
    return context


def test_istio_samples_load_as_they_are() -> None:
    for name in ("destination-rule-all-mtls.yaml", "egress-tls-origination.yaml"):
        parsed = parse_file(name, (SAMPLES / name).read_text())
        assert parsed.ok and not parsed.issues, [str(i) for i in parsed.issues]


def test_modes_replace_auto_mtls() -> None:
    auto = _cluster("    loadBalancer: {simple: RANDOM}")
    assert len(auto.transport_socket_matches) == 2 and not auto.HasField("transport_socket")
    # DISABLE: plaintext to everyone.
    off = _cluster("    tls: {mode: DISABLE}")
    assert not off.transport_socket_matches and not off.HasField("transport_socket")
    # ISTIO_MUTUAL: the mesh's secrets to every endpoint, names checked when given.
    istio = _context(_cluster("    tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://x/y]}"))
    common = istio.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "ROOTCA"
    (san,) = combined.default_validation_context.match_typed_subject_alt_names
    assert san.matcher.exact == "spiffe://x/y" and san.san_type == san.URI
    # ... but a sidecar without a certificate cannot present one: plaintext.
    bare = _cluster("    tls: {mode: ISTIO_MUTUAL}", mtls=False)
    assert not bare.HasField("transport_socket") and not bare.transport_socket_matches


def test_simple_and_mutual_from_files_with_sni_from_the_host() -> None:
    found = _cluster("    tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}")
    context = _context(found)
    assert context.common_tls_context.validation_context.trusted_ca.filename == "/etc/ca.pem"
    assert not found.transport_socket_matches and not context.sni
    options = hpo_pb2.HttpProtocolOptions()
    found.typed_extension_protocol_options[OPTIONS].Unpack(options)
    assert options.upstream_http_protocol_options.auto_sni
    assert options.upstream_http_protocol_options.auto_san_validation
    # No CA given: the system's roots; insecureSkipVerify: none at all.
    system = _context(_cluster("    tls: {mode: SIMPLE}")).common_tls_context
    assert system.validation_context.HasField("system_root_certs")
    skip = _context(_cluster("    tls: {mode: SIMPLE, insecureSkipVerify: true}"))
    assert not skip.common_tls_context.HasField("validation_context")
    mutual = _context(
        _cluster("    tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, sni: r.x}")
    )
    (pair,) = mutual.common_tls_context.tls_certificates
    assert pair.certificate_chain.filename == "/c.pem" and pair.private_key.filename == "/k.pem"
    assert mutual.sni == "r.x"


def test_port_level_tls_applies_to_its_port_only() -> None:
    sample = (SAMPLES / "egress-tls-origination.yaml").read_text()
    config = config_from(sample)
    out = translate(World(config, WORKLOADS), CALLER)[CLUSTER]
    tls_port = cluster({CLUSTER: out}, "outbound|80||edition.cnn.com")
    assert tls_port.transport_socket.name == "envoy.transport_sockets.tls"
    plain_port = cluster({CLUSTER: out}, "outbound|443||edition.cnn.com")
    assert not plain_port.HasField("transport_socket")


def test_each_mode_wants_its_fields() -> None:
    for tls, field, words in (
        ("{mode: MUTUAL}", "clientCertificate", "required"),
        ("{mode: ISTIO_MUTUAL, caCertificates: /a}", "caCertificates", "ISTIO_MUTUAL"),
        ("{mode: SIMPLE, privateKey: /k}", "privateKey", "only with mode MUTUAL"),
        ("{mode: SIMPLE, credentialName: c}", "credentialName", "not supported yet"),
    ):
        parsed = parse_file("dr.yaml", dr(f"    tls: {tls}"))
        errors = [i for i in parsed.issues if i.severity == "error"]
        assert errors and errors[0].field.endswith(field), [str(e) for e in errors]
        assert words in errors[0].message


def test_tls_applies_to_hosts_resolved_by_the_request_too() -> None:
    entry = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.com
  trafficPolicy: {tls: {mode: SIMPLE}}
"""
    out = translate(World(config_from(entry), WORKLOADS), CALLER)
    found = cluster(out, "outbound|80||api.example.com")
    assert found.transport_socket.name == "envoy.transport_sockets.tls"
