"""Responses are joined from the resources' bytes instead of built as messages: they must
be exactly the bytes protobuf writes for the same DiscoveryResponse, for any content."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.resources import CLUSTER, ResourceSet, field_bytes, pack_serialized
from xds_server.ads.responses import delta_response, response

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
# A resource's bytes hold its name (its hash, and so the response cache, rely on it).
contents = st.dictionaries(names, st.binary(max_size=300), max_size=6).map(
    lambda found: ResourceSet(
        {
            n: pack_serialized(n, CLUSTER.rsplit("/", 1)[1], field_bytes(1, n.encode()) + v)
            for n, v in found.items()
        }
    )
)


@settings(max_examples=200, deadline=None)
@given(contents, names, names)
def test_a_sotw_response_is_what_protobuf_writes(content, version, control_plane) -> None:
    sent = response(CLUSTER, version, content, control_plane)
    whole = discovery_pb2.DiscoveryResponse(
        version_info=version,
        type_url=CLUSTER,
        nonce=sent.nonce,
        resources=[content[name].any for name in sorted(content)],
        control_plane=base_pb2.ControlPlane(identifier=control_plane),
    )
    assert sent.body == whole.SerializeToString(deterministic=True)


@settings(max_examples=200, deadline=None)
@given(contents, st.frozensets(names, max_size=4), names, names)
def test_a_delta_response_is_what_protobuf_writes(content, removed, version, control_plane):
    sent = delta_response(CLUSTER, version, content, removed, control_plane)
    whole = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version,
        type_url=CLUSTER,
        nonce=sent.nonce,
        resources=[
            discovery_pb2.Resource(
                name=name, version=content[name].hash, resource=content[name].any
            )
            for name in sorted(content)
        ],
        removed_resources=sorted(removed),
        control_plane=base_pb2.ControlPlane(identifier=control_plane),
    )
    assert sent.body == whole.SerializeToString(deterministic=True)
