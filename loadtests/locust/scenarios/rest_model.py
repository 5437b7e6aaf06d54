"""Direct model inference over REST: POST /v2/models/{--model}/infer with a [1,4] FP32 tensor."""

from __future__ import annotations

from locust import FastHttpUser, task

from loadtests.locust import options, rest


class RestModelUser(FastHttpUser):
    def on_start(self) -> None:
        self.settings = options.settings(self.environment)

    @task
    def infer(self) -> None:
        rest.infer_model(self.client, self.settings.model)
