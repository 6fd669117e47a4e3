"""Istio HTTPMatchRequest to Envoy RouteMatch (Istio §2.2)."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from protos import virtual_service_pb2 as vs_pb2


def string_matcher(match: vs_pb2.StringMatch, ignore_case: bool = False):
    """Envoy StringMatcher for an Istio StringMatch; None means "present with any value"."""
    kind = match.WhichOneof("match_type")
    if kind is None or (kind == "regex" and match.regex == "*"):
        return None
    if kind == "regex":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.regex))
    if kind == "prefix":
        return string_pb2.StringMatcher(prefix=match.prefix, ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=match.exact, ignore_case=ignore_case)


def _header(name: str, match: vs_pb2.StringMatch, invert: bool = False) -> rc.HeaderMatcher:
    matcher = string_matcher(match)
    if matcher is None:
        return rc.HeaderMatcher(name=name, present_match=True, invert_match=invert)
    return rc.HeaderMatcher(
        name=name, string_match=matcher, invert_match=invert, treat_missing_header_as_empty=invert
    )


def route_match(match: vs_pb2.HTTPMatchRequest | None) -> rc.RouteMatch:
    out = rc.RouteMatch(case_sensitive=wrappers_pb2.BoolValue(value=True))
    if match is None:
        out.prefix = "/"
        return out
    out.case_sensitive.value = not match.ignore_uri_case
    uri = match.uri.WhichOneof("match_type") if match.HasField("uri") else None
    if uri == "exact":
        out.path = match.uri.exact
    elif uri == "prefix":
        out.prefix = match.uri.prefix
    elif uri == "regex":
        out.safe_regex.regex = match.uri.regex
    else:
        out.prefix = "/"
    for name in sorted(match.headers):
        out.headers.append(_header(name, match.headers[name]))
    for name in sorted(match.without_headers):
        out.headers.append(_header(name, match.without_headers[name], invert=True))
    for field_name, header in (
        ("method", ":method"),
        ("authority", ":authority"),
        ("scheme", ":scheme"),
    ):
        if match.HasField(field_name):
            out.headers.append(_header(header, getattr(match, field_name)))
    for name in sorted(match.query_params):
        matcher = string_matcher(match.query_params[name])
        if matcher is None:
            out.query_parameters.append(rc.QueryParameterMatcher(name=name, present_match=True))
        else:
            out.query_parameters.append(rc.QueryParameterMatcher(name=name, string_match=matcher))
    return out


def is_catch_all(match: vs_pb2.HTTPMatchRequest | None) -> bool:
    """A match that takes every request: routes after it can never be reached."""
    if match is None:
        return True
    if (
        match.headers
        or match.without_headers
        or match.query_params
        or any(match.HasField(f) for f in ("method", "authority", "scheme"))
    ):
        return False
    if not match.HasField("uri"):
        return True
    kind = match.uri.WhichOneof("match_type")
    return (kind == "prefix" and match.uri.prefix == "/") or (
        kind == "regex" and match.uri.regex == ".*"
    )
