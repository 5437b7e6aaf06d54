"""Settings, Seldon manifest loading and sample manifests (bottom layer: imports nothing of headrace)."""
