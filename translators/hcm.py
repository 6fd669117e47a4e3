"""One builder for every HTTP connection manager: sidecar outbound and inbound, gateway.

The parts they share (codec, idle timeout, the filters of their side from the registry in
translators.http_filters) are set here once; each caller brings only what is its own (the
routes, a stat prefix, options such as absolute URLs for an HTTP proxy)."""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import duration_pb2

from translators.clusters import ADS_SOURCE
from translators.http_filters import filters_for

ZERO = duration_pb2.Duration()


def build_hcm(
    side: str,
    stat_prefix: str,
    *,
    rds: str | None = None,
    route_config: route_pb2.RouteConfiguration | None = None,
    **options: Any,
) -> hcm_pb2.HttpConnectionManager:
    """An HCM on `side` with routes from RDS `rds` or inline `route_config`."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http_filters=filters_for(side),
        stream_idle_timeout=ZERO,
        **options,
    )
    if rds is not None:
        hcm.rds.CopyFrom(hcm_pb2.Rds(config_source=ADS_SOURCE, route_config_name=rds))
    elif route_config is not None:
        hcm.route_config.CopyFrom(route_config)
    return hcm
