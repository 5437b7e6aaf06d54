"""A pipeline over REST: POST /v2/models/{--pipeline}/infer, header `Seldon-Model: {--pipeline}.pipeline`."""

from __future__ import annotations

from locust import FastHttpUser, task

from loadtests.locust import options, rest


class PipelineUser(FastHttpUser):
    def on_start(self) -> None:
        self.settings = options.settings(self.environment)

    @task
    def infer(self) -> None:
        rest.infer_pipeline(self.client, self.settings.pipeline)
