"""RequestAuthentication -> Envoy's JWT filter on a sidecar's inbound side (Istio §security).

The rules of every policy that applies to a workload (the root namespace's and its own
namespace's, with a matching selector or none) become providers of one filter. A request
with no token goes on (authorization decides); a token that no provider verifies gets
401. The claims of a verified token land in the filter's dynamic metadata under
PAYLOAD_KEY, where RBAC (translators.authorization) reads the request principal
(`<iss>/<sub>`) and `request.auth.*`.

Keys are inline: a rule's own `jwks`, or what the server fetched from `jwksUri` (passed
in as `fetched`, by JwksSource); an issuer whose keys are not known yet gets a key set
that verifies nothing, so that its tokens fail closed.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import empty_pb2

from protos import request_authentication_pb2 as ra_pb2
from translators import jwks, model
from translators.resources import to_any

JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "payload"
OPENID_PREFIX = "openid:"  # JwksSource key of an issuer whose keys discovery finds


def applicable(config: model.MeshConfig, proxy: model.Proxy) -> list[model.ConfigResource]:
    """The policies that apply to `proxy`'s workload, oldest first."""
    return model.workload_policies(config, model.REQUEST_AUTHENTICATION, proxy)


def source_of(rule: ra_pb2.JWTRule) -> str | None:
    """Where the server fetches a rule's keys: its jwksUri, the issuer's OpenID
    discovery, or nowhere (inline keys)."""
    if rule.jwks:
        return None
    return rule.jwks_uri or OPENID_PREFIX + rule.issuer


def sources(config: model.MeshConfig, default_timeout: float) -> dict[str, float]:
    """Every key source the configuration names, with how long one fetch of it may take
    (the shortest `timeout` of the rules that name it)."""
    out: dict[str, float] = {}
    for policy in config.of_kind(model.REQUEST_AUTHENTICATION):
        for rule in policy.spec.jwt_rules:
            source = source_of(rule)
            if source is not None:
                timeout = (
                    rule.timeout.ToTimedelta().total_seconds()
                    if rule.HasField("timeout")
                    else default_timeout
                )
                out[source] = min(out.get(source, timeout), timeout)
    return out


def issuers(policies: list[model.ConfigResource]) -> tuple[str, ...]:
    """The issuers whose tokens the workload verifies, sorted, each once."""
    return tuple(sorted({r.issuer for p in policies for r in p.spec.jwt_rules}))


def jwt_filter(
    policies: list[model.ConfigResource], fetched: Mapping[str, str]
) -> hcm_pb2.HttpFilter | None:
    """The JWT filter for these policies; None when they hold no rules."""
    config = jwt_pb2.JwtAuthentication()
    names: list[str] = []
    for policy in policies:
        for rule in policy.spec.jwt_rules:
            name = f"origins-{len(names)}"
            names.append(name)
            config.providers[name].CopyFrom(_provider(rule, fetched))
    if not names:
        return None
    requires = jwt_pb2.JwtRequirement(
        requires_any=jwt_pb2.JwtRequirementOrList(
            requirements=[
                *(jwt_pb2.JwtRequirement(provider_name=n) for n in names),
                jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty()),
            ]
        )
    )
    config.rules.append(jwt_pb2.RequirementRule(match=rc.RouteMatch(prefix="/"), requires=requires))
    return hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=to_any(config))


def _provider(rule: ra_pb2.JWTRule, fetched: Mapping[str, str]) -> jwt_pb2.JwtProvider:
    source = source_of(rule)
    keys = rule.jwks if source is None else fetched.get(source, jwks.FAIL_CLOSED)
    provider = jwt_pb2.JwtProvider(
        issuer=rule.issuer,
        audiences=list(rule.audiences),
        local_jwks=base_pb2.DataSource(inline_string=keys),
        forward=rule.forward_original_token,
        from_params=list(rule.from_params),
        from_cookies=list(rule.from_cookies),
        forward_payload_header=rule.output_payload_to_header,
        payload_in_metadata=PAYLOAD_KEY,
    )
    for header in rule.from_headers:
        provider.from_headers.add(name=header.name, value_prefix=header.prefix)
    for claim in rule.output_claim_to_headers:
        provider.claim_to_headers.add(header_name=claim.header, claim_name=claim.claim)
    return provider
