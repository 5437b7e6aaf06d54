"""REST calls of a locust HTTP user: a model's and a pipeline's infer endpoint, answers checked."""

from __future__ import annotations

from typing import Any

from locust.contrib.fasthttp import FastHttpSession

from loadtests.locust import oip

JSON = {"Content-Type": "application/json"}


def infer_model(client: FastHttpSession, model: str) -> None:
    """POST /v2/models/{model}/infer; reported as POST /v2/models/{model}/infer."""
    path = f"/v2/models/{model}/infer"
    _post(client, path, path, JSON)


def infer_pipeline(client: FastHttpSession, pipeline: str) -> None:
    """The pipeline through the model route with Seldon's header; reported with the header's value."""
    path = f"/v2/models/{pipeline}/infer"
    _post(client, path, f"{path} [{pipeline}.pipeline]", {**JSON, "Seldon-Model": f"{pipeline}.pipeline"})


def _post(client: FastHttpSession, path: str, name: str, headers: dict[str, str]) -> None:
    # locust's hint says str, but geventhttpclient sends bytes as they are (a str it would encode each time)
    body: Any = oip.REST_BODY
    with client.post(path, data=body, headers=headers, name=name, catch_response=True) as resp:
        if resp.status_code == 0:  # no answer at all: refused, reset, timed out
            resp.failure(f"no answer: {resp.error!r}")
            return
        problem = oip.rest_problem(resp.status_code, resp.content)
        if problem is None:
            resp.success()
        else:
            resp.failure(problem)
