"""The OIP (KServe v2) protobuf classes and gRPC stubs, from tritonclient's maintained generated code."""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2 as _pb2
from tritonclient.grpc import service_pb2_grpc as _pb2_grpc

# Package ``inference``, service ``inference.GRPCInferenceService``. The generated modules carry no
# type information, so they are typed as Any here.
pb2: Any = _pb2
pb2_grpc: Any = _pb2_grpc

SERVICE_NAME = "inference.GRPCInferenceService"

__all__ = ["SERVICE_NAME", "pb2", "pb2_grpc"]
