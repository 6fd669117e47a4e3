"""AuthorizationPolicy CUSTOM -> Envoy's ext_authz filter, asking the mesh config's
extension provider (`envoyExtAuthzHttp` or `envoyExtAuthzGrpc`), as Istio builds it.

The CUSTOM policies' rules decide which requests are sent to the provider: they become
an RBAC filter in shadow mode, whose matched policy id (prefixed `istio-ext-authz`)
lands in dynamic metadata, and the ext_authz filter runs only when it is there. CUSTOM
goes first, before DENY, ALLOW and AUDIT. One provider per workload, as Istio allows:
policies that name a provider the mesh config does not have, or two providers for one
workload, fail closed (their rules deny). On TCP ports a gRPC provider checks the
connections (network ext_authz); an HTTP provider cannot, and is skipped, as in Istio.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2, http_uri_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as network_ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2

from protos import mesh_config_pb2
from translators import model
from translators.naming import fqdn, outbound_cluster
from translators.resources import to_any

EXT_AUTHZ = "envoy.filters.http.ext_authz"
HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
NETWORK_RBAC = "envoy.filters.network.rbac"
SHADOW_PREFIX = "istio_ext_authz_"  # the shadow rules' stat and metadata prefix
POLICY_PREFIX = "istio-ext-authz"  # what the matched policy ids start with
DEFAULT_TIMEOUT = duration_pb2.Duration(seconds=600)  # Istio's


def provider_host(service: str) -> str:
    """Istio's `[namespace/]host`: the host, a short name in the default namespace."""
    host = service.rpartition("/")[2]
    return host if "." in host else fqdn(host, model.DEFAULT_NAMESPACE)


def provider_named(mesh: mesh_config_pb2.MeshConfig, name: str):
    return next((p for p in mesh.extension_providers if p.name == name), None)


def custom_filters(
    policies: Sequence[model.ConfigResource],
    mesh: mesh_config_pb2.MeshConfig,
    rules: rbac_pb2.RBAC,
) -> tuple[list[hcm_pb2.HttpFilter], bool]:
    """The filters of a workload's CUSTOM policies, whose rules (`rules`, built by the
    caller with policy ids prefixed POLICY_PREFIX) pick the requests to check; and
    whether they fail closed instead (the caller then denies with the rules)."""
    provider = _provider_of(policies, mesh)
    if provider is None or not rules.policies:
        return [], provider is None and bool(rules.policies)
    shadow = http_rbac_pb2.RBAC(shadow_rules=rules, shadow_rules_stat_prefix=SHADOW_PREFIX)
    config = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.V3,
        filter_enabled_metadata=_picked_by(HTTP_RBAC),
    )
    kind = provider.WhichOneof("provider")
    settings = getattr(provider, kind)
    config.failure_mode_allow = settings.fail_open
    config.status_on_error.CopyFrom(
        http_status_pb2.HttpStatus(code=int(settings.status_on_error or 403))
    )
    if kind == "envoy_ext_authz_grpc":
        config.grpc_service.CopyFrom(_grpc_service(settings))
    else:
        host = provider_host(settings.service)
        service = config.http_service
        service.server_uri.CopyFrom(
            http_uri_pb2.HttpUri(
                uri=f"http://{host}:{settings.port}",
                cluster=outbound_cluster(settings.port, host),
                timeout=_timeout(settings),
            )
        )
        service.path_prefix = settings.path_prefix
        for name, value in sorted(settings.include_additional_headers_in_check.items()):
            service.authorization_request.headers_to_add.add(key=name, value=value)
        response = service.authorization_response
        for field, names in (  # Envoy refuses an empty list: set only those given
            ("allowed_upstream_headers", settings.headers_to_upstream_on_allow),
            ("allowed_client_headers", settings.headers_to_downstream_on_deny),
            ("allowed_client_headers_on_success", settings.headers_to_downstream_on_allow),
        ):
            if names:
                getattr(response, field).patterns.extend(_exact(names))
        if settings.include_request_headers_in_check:
            config.allowed_headers.patterns.extend(
                _exact(settings.include_request_headers_in_check)
            )
    return [
        hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=to_any(shadow)),
        hcm_pb2.HttpFilter(name=EXT_AUTHZ, typed_config=to_any(config)),
    ], False


def custom_network_filters(
    policies: Sequence[model.ConfigResource],
    mesh: mesh_config_pb2.MeshConfig,
    rules: rbac_pb2.RBAC,
) -> list[listener_components_pb2.Filter]:
    """On TCP ports, as Istio: a gRPC provider checks the connections the rules select
    (network ext_authz behind shadow rules); an HTTP provider cannot, and is skipped."""
    provider = _provider_of(policies, mesh)
    if provider is None or provider.WhichOneof("provider") != "envoy_ext_authz_grpc":
        return []
    if not rules.policies:
        return []
    settings = provider.envoy_ext_authz_grpc
    shadow = network_rbac_pb2.RBAC(
        shadow_rules=rules, shadow_rules_stat_prefix=SHADOW_PREFIX, stat_prefix="istio_ext_authz."
    )
    check = network_ext_authz_pb2.ExtAuthz(
        stat_prefix="ext_authz",
        grpc_service=_grpc_service(settings),
        failure_mode_allow=settings.fail_open,
        transport_api_version=config_source_pb2.V3,
        filter_enabled_metadata=_picked_by(NETWORK_RBAC),
    )
    return [
        listener_components_pb2.Filter(name=NETWORK_RBAC, typed_config=to_any(shadow)),
        listener_components_pb2.Filter(name=NETWORK_EXT_AUTHZ, typed_config=to_any(check)),
    ]


def _provider_of(policies: Sequence[model.ConfigResource], mesh: mesh_config_pb2.MeshConfig):
    """The one provider the workload's CUSTOM policies name, if the mesh config has it;
    None for an unknown one or for several (they then fail closed)."""
    names = {p.spec.provider.name for p in policies}
    return provider_named(mesh, next(iter(names))) if len(names) == 1 else None


def _timeout(settings) -> duration_pb2.Duration:
    return settings.timeout if settings.HasField("timeout") else DEFAULT_TIMEOUT


def _grpc_service(settings) -> grpc_service_pb2.GrpcService:
    """A gRPC provider's service: its cluster in the registry, its timeout."""
    host = provider_host(settings.service)
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
            cluster_name=outbound_cluster(settings.port, host), authority=host
        ),
        timeout=_timeout(settings),
    )


def _picked_by(rbac_filter: str) -> metadata_pb2.MetadataMatcher:
    """Whether the shadow rules of `rbac_filter` picked this request or connection."""
    return metadata_pb2.MetadataMatcher(
        filter=rbac_filter,
        path=[
            metadata_pb2.MetadataMatcher.PathSegment(
                key=f"{SHADOW_PREFIX}shadow_effective_policy_id"
            )
        ],
        value={"string_match": string_pb2.StringMatcher(prefix=POLICY_PREFIX)},
    )


def _exact(names) -> list[string_pb2.StringMatcher]:
    return [string_pb2.StringMatcher(exact=n, ignore_case=True) for n in names]
