"""Load/unload under traffic: one user churns --churn-model via the control API, the rest call --model."""

from __future__ import annotations

from locust import FastHttpUser, constant, task

from loadtests.locust import options, rest
from loadtests.locust.control import ModelChurn


class StableTrafficUser(FastHttpUser):
    """Every request to the stable model must succeed while the other model comes and goes."""

    def on_start(self) -> None:
        self.settings = options.settings(self.environment)

    @task
    def infer(self) -> None:
        rest.infer_model(self.client, self.settings.model)


class LoadUnloadUser(FastHttpUser):
    """Exactly one, whatever --users says (the others are StableTrafficUsers). After each load it calls
    the new model once (its own row), so a model said to be ready that does not answer is a failure."""

    fixed_count = 1
    wait_time = constant(0.1)

    def on_start(self) -> None:
        settings = options.settings(self.environment)
        self.churn = ModelChurn(
            self.environment, settings.control_url, settings.churn_model, settings.churn_storage_uri
        )
        self.churn.remove()  # left over from an interrupted run

    def on_stop(self) -> None:
        self.churn.remove()

    @task
    def cycle(self) -> None:
        if not self.churn.load():
            self.churn.remove()  # the failure is reported; start the next cycle clean
            return
        rest.infer_model(self.client, self.churn.name)
        self.churn.unload()
