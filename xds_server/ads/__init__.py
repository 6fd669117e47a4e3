"""The Aggregated Discovery Service: protocol state machines and the gRPC servicer."""
