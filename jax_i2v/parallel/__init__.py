"""Device meshes and the logical-axis sharding rules (data parallel, FSDP, tensor parallel)."""
