"""Reading the mesh's YAML directory into a typed, validated MeshConfig."""
