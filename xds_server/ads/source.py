"""What the ADS servicer needs from the rest of the server: a place to register a proxy
and be handed its resources. The servicer depends on this, not on how resources are
computed (xds_server.mesh_state provides it; a test or another cache could too)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from translators import model
from translators.resources import Resources, ResourceSet

# Called with a proxy's newest resources and the generation they belong to; a slow
# stream keeps only the newest (see AdsServicer._serve).
Deliver = Callable[[Resources, int], None]


class ResourceSource(Protocol):
    def connect(self, proxy: model.Proxy, deliver: Deliver) -> int:
        """Watch `proxy`'s resources; returns a handle for disconnect."""
        ...

    def disconnect(self, handle: int) -> None:
        """Stop the watch (the stream ended)."""
        ...

    def set_secrets(self, handle: int, secrets: ResourceSet) -> None:
        """The stream's SDS secrets, sent with its resources from now on."""
        ...
