"""Ray Serve app for the pipeline benchmark: deployments A -> B -> C, each calling the next by handle.

Run by loadtests/bench/pipelines.py with the ray venv's python: `chain.py PORT STEPS`; prints READY.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
class Step:
    def __init__(self, nxt: Any = None) -> None:
        self.nxt = nxt

    async def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.nxt is not None:
            return await self.nxt.remote(body)  # type: ignore[no-any-return]
        return {"outputs": body.get("inputs", [])}


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
class Ingress:
    def __init__(self, nxt: Any = None) -> None:
        self.nxt = nxt

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        if self.nxt is not None:
            return await self.nxt.remote(body)  # type: ignore[no-any-return]
        return {"outputs": body.get("inputs", [])}


def main() -> None:
    port, steps = int(sys.argv[1]), int(sys.argv[2])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    nxt: Any = None
    for i in range(steps - 1, 0, -1):
        nxt = Step.options(name=f"step{i + 1}").bind(nxt)
    app = Ingress.options(name="step1").bind(nxt)
    serve.run(app, name="chain", route_prefix="/")
    print("READY", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
