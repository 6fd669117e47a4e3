"""The bootstrap's Prometheus port (Istio's 15090): Envoy's admin `/stats/prometheus`
under Istio's metric names.

Istio's metrics come from the stats access logger (translators.istio_metrics) under the
stat prefix `istio`, which Envoy's Prometheus output writes as `envoy_istio_<name>`.
Users' dashboards query `istio_requests_total`, so this listener, as Istio's does, sits
in front of the admin API and only serves `/stats/prometheus`; a Lua filter renames the
metrics and gives labels whose value Envoy had no answer for ("-") Istio's "unknown"
(`grpc_response_status` is empty for plain HTTP, and `response_flags` keeps "-", as in
Istio).
"""

from __future__ import annotations

from typing import Any

STATS_CLUSTER = "prometheus_stats"
STATS_LISTENER = "prometheus_stats"
# A full scrape is buffered for the rename: allow large stats outputs.
BUFFER_LIMIT = 64 * 1024 * 1024

RENAME_LUA = """
local kept = { response_flags = true }
local function label(name)
  if kept[name] then return nil end
  if name == "grpc_response_status" then return name .. '=""' end
  return name .. '="unknown"'
end
function envoy_on_response(handle)
  local body = handle:body()
  if body == nil then return end
  local text = body:getBytes(0, body:length())
  text = string.gsub(text, "envoy_istio_", "istio_")
  text = string.gsub(text, '([%w_]+)="%-"', label)
  body:setBytes(text)
end
"""

_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def prometheus_resources(
    address: str, port: int, admin_address: str, admin_port: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(listener, cluster): `address:port` serving `/stats/prometheus` from the admin API."""
    admin_host = "127.0.0.1" if admin_address in ("0.0.0.0", "") else admin_address
    listener = {
        "name": STATS_LISTENER,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _HCM,
                            "stat_prefix": "stats",
                            "codec_type": "AUTO",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "backend",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/stats/prometheus"},
                                                "route": {"cluster": STATS_CLUSTER},
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.lua",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/"
                                        "envoy.extensions.filters.http.lua.v3.Lua",
                                        "default_source_code": {"inline_string": RENAME_LUA},
                                    },
                                },
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/"
                                        "envoy.extensions.filters.http.router.v3.Router"
                                    },
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }
    cluster = {
        "name": STATS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
        "load_assignment": {
            "cluster_name": STATS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": admin_host,
                                        "port_value": admin_port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    return listener, cluster


def stats_matcher(inclusion: dict[str, list[str]]) -> dict[str, Any] | None:
    """Envoy's stats_config.stats_matcher from ProxyConfig.proxyStatsMatcher's
    inclusionPrefixes / inclusionSuffixes / inclusionRegexps; None when all are empty.
    Istio's metrics and the stats an operator needs to see the proxy's own health (the
    server, the managers, the xDS cluster) are always kept, as Istio keeps them."""
    patterns: list[dict[str, Any]] = []
    for prefix in inclusion.get("prefixes", []):
        patterns.append({"prefix": prefix})
    for suffix in inclusion.get("suffixes", []):
        patterns.append({"suffix": suffix})
    for regex in inclusion.get("regexps", []):
        patterns.append({"safe_regex": {"regex": regex}})
    if not patterns:
        return None
    for prefix in ALWAYS_KEPT:
        patterns.append({"prefix": prefix})
    return {"inclusion_list": {"patterns": patterns}}


ALWAYS_KEPT = ("istio.", "server.", "cluster_manager.", "listener_manager.", "cluster.xds_cluster.")
