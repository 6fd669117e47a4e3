"""The xDS control plane: everything with I/O (config source, registry, cache, ADS, CLI)."""
