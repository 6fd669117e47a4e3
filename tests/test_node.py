"""A node's metadata as a Proxy: Istio's INTERCEPTION_MODE selects capture."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from xds_server.node import NodeError, proxy_from_node


def _node(**metadata) -> base_pb2.Node:
    node = base_pb2.Node(id="reviews-v1")
    json_format.ParseDict(metadata, node.metadata)
    return node


def test_interception_mode_defaults_to_none_and_accepts_redirect() -> None:
    assert not proxy_from_node(_node(), "ipv4:198.18.0.11:5000").captured
    captured = proxy_from_node(_node(INTERCEPTION_MODE="redirect"), "ipv4:198.18.0.11:5000")
    assert captured.captured and captured.interception == "REDIRECT"


def test_an_unknown_interception_mode_is_refused_by_name() -> None:
    with pytest.raises(NodeError, match="INTERCEPTION_MODE.*TPROXY"):
        proxy_from_node(_node(INTERCEPTION_MODE="TPROXY"), "ipv4:198.18.0.11:5000")
