"""Benchmark: /v1/classify on Ray Serve vs a plain FastAPI + uvicorn process, same model.

Run: ``.venv/bin/python bench/serve.py [--requests 300] [--concurrency 8]``

Both servers hold the same registered model (the demo's architecture, 64×64 crops) and get the
same requests (20 crops each) from the same asyncio client on this machine. Prints requests/s,
p50 and p99 latency of each and the throughput ratio (goal ≥ 0.8, p99 < 100 ms on CPU). Then it
loads Ray Serve harder and prints the Classifier replica count it saw rise and fall again.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from lch.mlflow_store import tracking_uri
from lch.model import AAE, AAEConfig, LCHModel
from lch.pipelines.runtime import free_port, init_ray
from lch.promotion import promote
from lch.registry import log_lch_model
from lch.serving.contract import encode_npy

HERE = Path(__file__).parent


def register_model() -> str:
    torch.manual_seed(0)
    aae = AAE(AAEConfig(crop_size=64, latent_dim=56, width=0.125)).eval()
    rng = np.random.default_rng(0)
    model = LCHModel.from_aae(aae, rng.normal(size=56), 0.0, rng.normal(size=(100, 56)))
    version = log_lch_model(model, cohorts=["bench"], population_accuracy=1.0)
    promote(version)
    return version


async def load(url: str, payload: dict, requests: int, concurrency: int) -> tuple[float, list]:
    latencies: list[float] = []
    queue = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in queue:
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/classify", json=payload)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=60) as client:
        await client.post(f"{url}/v1/classify", json=payload)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def report(name: str, seconds: float, latencies: list) -> float:
    rate = len(latencies) / seconds
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    print(f"{name:<28} {rate:7.1f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms")
    return rate


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(f"{url}/docs", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("the plain FastAPI server did not start")


def classifier_replicas() -> int:
    from ray import serve

    status = serve.status().applications["lch"].deployments["Classifier"]
    return status.replica_states.get("RUNNING", 0)


def watch_scaling(url: str, payload: dict, seconds: float, concurrency: int) -> None:
    counts = []

    async def run_load() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            stop = time.monotonic() + seconds

            async def worker() -> None:
                while time.monotonic() < stop:
                    await client.post(f"{url}/v1/classify", json=payload)

            async def watch() -> None:
                while time.monotonic() < stop:
                    counts.append(classifier_replicas())
                    await asyncio.sleep(1)

            await asyncio.gather(watch(), *(worker() for _ in range(concurrency)))

    asyncio.run(run_load())
    print(f"Classifier replicas during {seconds:.0f} s of load at concurrency {concurrency}: "
          f"start {counts[0]}, max {max(counts)}")
    deadline = time.monotonic() + 90
    while classifier_replicas() > 1 and time.monotonic() < deadline:
        time.sleep(2)
    print(f"after the load: {classifier_replicas()} replica(s) "
          f"({90 - max(0, deadline - time.monotonic()):.0f} s to scale down)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    os.environ["LCH_HOME"] = tempfile.mkdtemp(prefix="lch-bench-serve-")
    version = register_model()
    crops = np.random.default_rng(0).uniform(0.3, 0.7, (20, 64, 64)).astype(np.float32)
    payload = {"crops_npy": encode_npy(crops)}  # what lch.serving.client sends

    plain_port = free_port()
    plain = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "plain_app:app", "--port", str(plain_port),
         "--log-level", "warning"],
        cwd=HERE, env={**os.environ, "LCH_BENCH_MODEL_URI": f"models:/lch-aae/{version}",
                       "MLFLOW_TRACKING_URI": tracking_uri()},
    )
    try:
        plain_url = f"http://127.0.0.1:{plain_port}"
        wait_ready(plain_url, plain)
        report("plain, one client", *asyncio.run(load(plain_url, payload, 100, 1)))
        plain_rate = report(f"plain, {args.concurrency} clients", *asyncio.run(
            load(plain_url, payload, args.requests, args.concurrency)))
    finally:
        plain.terminate()
        plain.wait()

    from ray import serve

    from lch.serving.app import build_app

    init_ray()
    serve_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    serve.run(build_app(), name="lch", route_prefix="/")
    serve_url = f"http://127.0.0.1:{serve_port}"
    report("Ray Serve, one client", *asyncio.run(load(serve_url, payload, 100, 1)))
    serve_rate = report(f"Ray Serve, {args.concurrency} clients", *asyncio.run(
        load(serve_url, payload, args.requests, args.concurrency)))
    print(f"throughput ratio Serve / plain: {serve_rate / plain_rate:.2f}   (goal >= 0.8)")
    watch_scaling(serve_url, payload, seconds=20, concurrency=4 * args.concurrency)
    serve.shutdown()


if __name__ == "__main__":
    main()
