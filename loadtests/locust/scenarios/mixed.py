"""A mixed workload: each user sends REST model, gRPC model and pipeline requests, weighted 3:2:1."""

from __future__ import annotations

from locust import FastHttpUser, task

from loadtests.locust import options, rest
from loadtests.locust.grpc_client import GrpcInfer


class MixedUser(FastHttpUser):
    def on_start(self) -> None:
        self.settings = options.settings(self.environment)
        self.grpc = GrpcInfer(self.environment, self.settings.grpc_target)

    def on_stop(self) -> None:
        self.grpc.close()

    @task(3)
    def rest_model(self) -> None:
        rest.infer_model(self.client, self.settings.model)

    @task(2)
    def grpc_model(self) -> None:
        self.grpc.infer(self.settings.model)

    @task(1)
    def pipeline(self) -> None:
        rest.infer_pipeline(self.client, self.settings.pipeline)
