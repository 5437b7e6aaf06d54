"""Front door (REST, gRPC), the OIP data plane, and the model-server runtime and its client."""
