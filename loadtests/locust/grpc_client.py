"""gRPC ModelInfer for locust users: grpc driven by gevent, one locust request event per call."""

from __future__ import annotations

import time

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust.env import Environment
from tritonclient.grpc import service_pb2_grpc

from loadtests.locust import oip

# locust has patched the standard library by now (importing it does); grpc must follow before any
# channel exists, or its calls block the whole process instead of yielding to other users
grpc_gevent.init_gevent()

TIMEOUT_S = 60.0  # as locust's HTTP users' network_timeout


class GrpcInfer:
    """One channel (one HTTP/2 connection) per user, as each HTTP user has its own connection."""

    def __init__(self, environment: Environment, target: str) -> None:
        self.environment = environment
        self.channel = grpc.insecure_channel(target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def infer(self, model: str) -> None:
        """ModelInfer on ``model``; reported as request type gRPC, name ModelInfer {model}."""
        request = oip.grpc_request(model)
        start_time = time.time()
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            response = self.stub.ModelInfer(request, timeout=TIMEOUT_S)
            length = response.ByteSize()
            problem = oip.grpc_problem(response)
            if problem is not None:
                exception = WrongAnswer(problem)
        except grpc.RpcError as exc:
            exception = GrpcFailure(exc)
        self.environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type="gRPC",
            name=f"ModelInfer {model}",
            start_time=start_time,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=None,
            context={},
            exception=exception,
        )

    def close(self) -> None:
        self.channel.close()


class WrongAnswer(Exception):
    """The server answered, but not with what an OIP answer must hold."""


class GrpcFailure(Exception):
    """A call that ended in a gRPC status other than OK; the message is `CODE: details`."""

    def __init__(self, exc: grpc.RpcError) -> None:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        super().__init__(f"{code.name if code else 'UNKNOWN'}: {(details or '')[:200]}")
