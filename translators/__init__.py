"""Pure translation from the typed mesh model to Envoy v3 protobuf messages (no I/O)."""
