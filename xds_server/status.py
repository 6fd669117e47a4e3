"""What the debug endpoints report: per-proxy sync status and config dumps (pure views)."""

from __future__ import annotations

from typing import Any

from envoy.admin.v3 import config_dump_pb2
from envoy.admin.v3 import config_dump_shared_pb2 as shared
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from translators.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SHORT_NAMES
from xds_server.ads.servicer import StreamInfo


def syncz(streams: dict[str, StreamInfo], generation: int) -> dict[str, Any]:
    proxies = []
    for node_id in sorted(streams):
        info = streams[node_id]
        types = {}
        for type_url in PUSH_ORDER:
            state = info.protocol.types.get(type_url)
            if state is None:
                continue
            types[SHORT_NAMES[type_url]] = {
                "status": state.status(),
                "sent_version": state.sent_version,
                "sent_nonce": state.sent_nonce,
                "acked_version": state.acked_version,
                "acked_at": state.acked_at,
                "nacked_version": state.nacked_version,
                "nack_error": state.nack_message,
                "nacks": state.nacks,
                "responses_sent": state.responses_sent,
                "bytes_sent": state.bytes_sent,
                "resources": len(state.sent),
                "generation": state.sent_generation,
            }
        proxies.append(
            {
                "proxy": node_id,
                "namespace": info.namespace,
                "cluster": info.cluster,
                "envoy_version": info.envoy_version,
                "admin": info.admin,
                "peer": info.peer,
                "api": info.protocol.api,
                "generation": info.protocol.generation,
                "types": types,
            }
        )
    return {"generation": generation, "proxies": proxies}


def config_dump(info: StreamInfo) -> dict[str, Any]:
    """What the server sent this proxy, in the shape of Envoy's /config_dump."""
    state = info.protocol.types
    dump = config_dump_pb2.ConfigDump()

    def sent(type_url: str):
        type_state = state.get(type_url)
        return (type_state.sent_version, type_state.sent) if type_state else ("", {})

    version, clusters = sent(CLUSTER)
    clusters_dump = shared.ClustersConfigDump(version_info=version)
    for name in sorted(clusters):
        entry = clusters_dump.dynamic_active_clusters.add(version_info=version)
        entry.cluster.CopyFrom(clusters[name].any)
    version, listeners = sent(LISTENER)
    listeners_dump = shared.ListenersConfigDump(version_info=version)
    for name in sorted(listeners):
        entry = listeners_dump.dynamic_listeners.add(name=name)
        entry.active_state.version_info = version
        entry.active_state.listener.CopyFrom(listeners[name].any)
    version, routes = sent(ROUTE)
    routes_dump = shared.RoutesConfigDump()
    for name in sorted(routes):
        entry = routes_dump.dynamic_route_configs.add(version_info=version)
        entry.route_config.CopyFrom(routes[name].any)
    version, assignments = sent(ENDPOINT)
    endpoints_dump = shared.EndpointsConfigDump()
    for name in sorted(assignments):
        entry = endpoints_dump.dynamic_endpoint_configs.add(version_info=version)
        entry.endpoint_config.CopyFrom(assignments[name].any)
    for part in (clusters_dump, listeners_dump, routes_dump, endpoints_dump):
        dump.configs.add().Pack(part)
    return json_format.MessageToDict(dump, preserving_proto_field_name=True)


# Importing the message modules registers their types for Any -> JSON in config_dump.
_REGISTERED = (cluster_pb2, endpoint_pb2, listener_pb2, route_pb2)
