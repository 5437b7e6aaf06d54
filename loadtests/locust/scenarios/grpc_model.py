"""Direct model inference over gRPC: ModelInfer on --model at --grpc-host, rest_model's tensor."""

from __future__ import annotations

from locust import User, task

from loadtests.locust import options
from loadtests.locust.grpc_client import GrpcInfer


class GrpcModelUser(User):
    def on_start(self) -> None:
        self.settings = options.settings(self.environment)
        self.grpc = GrpcInfer(self.environment, self.settings.grpc_target)

    def on_stop(self) -> None:
        self.grpc.close()

    @task
    def infer(self) -> None:
        self.grpc.infer(self.settings.model)
