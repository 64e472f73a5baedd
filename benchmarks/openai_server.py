"""The OpenAI-compatible server under concurrent clients: requests/s and latency, dynamic batching against one
request at a time.

    python benchmarks/openai_server.py --size small                          # t5-small shape, minutes on 2 cores
    python benchmarks/openai_server.py --model-dir runs/export/ctranslate2   # an export of your own

Two servers (``python -m tools.serve``, each its own process, as a user starts it) serve the same CTranslate2
conversion (a random-weight model of ``--size`` with LoRA and the prompt, exported and converted as the export
step does, unless ``--model-dir`` names one), quantized as ``--compute-type`` says: one with dynamic batching
(``--max-batch-size 16``), one a request at a time (``--max-batch-size 1``). For each number of concurrent
clients (``--clients``), the clients send greedy completions requests (``--max-tokens``) back to back until
``--requests`` are answered; the two servers take turns, ``--repeats`` rounds of every (server, clients) pair.
Reported: requests/s and new tokens/s (medians over the rounds, with the range), the p50 and p99 latency of
every request of the rounds, the server's CPU seconds per round and the 1-minute load average; ``speedup`` is
the batching server's median requests/s over the other's. The last line is JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import ROOT, SIZES, device_name, print_json_last
from generation import sample_texts
from serving import export_random_model

MODES = {"dynamic batching": 16, "one at a time": 1}
MODEL = "benchmark"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path, max_batch_size: int, compute_type: str, max_tokens: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "tools.serve", "--model-dir", str(folder), "--model-name", MODEL, "--port", str(port)]
    command += ["--compute-type", compute_type, "--max-batch-size", str(max_batch_size), "--max-queue", "1024", "--max-tokens", str(max_tokens)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start: {process.stderr.read() if process.poll() is not None else 'timed out'}")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far (Linux: /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_run(port: int, clients: int, requests: int, texts: list[str], max_tokens: int) -> dict:
    """``clients`` threads sending requests back to back until ``requests`` are answered: wall seconds, each latency, new tokens."""
    taken, lock = iter(range(requests)), threading.Lock()
    latencies: list[float] = []
    tokens: list[int] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                index = next(taken, None)
            if index is None:
                return
            body = json.dumps({"model": MODEL, "prompt": texts[index % len(texts)], "max_tokens": max_tokens, "temperature": 0})
            start = time.perf_counter()
            connection.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"the server answered {response.status}: {answer}")
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens.append(answer["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_s": time.perf_counter() - start, "latencies": latencies, "tokens": sum(tokens)}


def summary(runs: list[dict], requests: int) -> dict:
    rates = sorted(requests / run["wall_s"] for run in runs)
    latencies = sorted(latency for run in runs for latency in run["latencies"])
    percentiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests_per_s": {"median": round(statistics.median(rates), 2), "min": round(rates[0], 2), "max": round(rates[-1], 2), "runs": len(runs)},
        "new_tokens_per_s_median": round(statistics.median(run["tokens"] / run["wall_s"] for run in runs), 1),
        "latency_s": {"p50": round(percentiles[49], 3), "p99": round(percentiles[98], 3)},
        "server_cpu_s_median": round(statistics.median(run["server_cpu_s"] for run in runs), 2),
        "load_1min": [round(min(run["load"] for run in runs), 2), round(max(run["load"] for run in runs), 2)],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="the model's shape (random weights), unless --model-dir")
    parser.add_argument("--model-dir", help="a CTranslate2 folder of the export step to serve instead of a random model")
    parser.add_argument("--compute-type", default="int8", help="CTranslate2's compute type for both servers")
    parser.add_argument("--clients", default="1,8,16,32", help="numbers of concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=64, help="requests answered in each round")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens asked for in each request")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every (server, clients) pair")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    clients = [int(n) for n in args.clients.split(",")]
    texts = sample_texts(args.requests)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(args.model_dir) if args.model_dir else export_random_model(args.size, Path(folder))[1]
        servers: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            for mode, size in MODES.items():
                servers[mode] = start_server(model_dir, size, args.compute_type, args.max_tokens)
                load_run(servers[mode][1], 1, 2, texts, args.max_tokens)  # warm-up
            runs: dict[tuple[str, int], list[dict]] = {(mode, n): [] for mode in MODES for n in clients}
            for _ in range(args.repeats):
                for n in clients:
                    for mode, (process, port) in servers.items():
                        load, cpu = os.getloadavg()[0], cpu_seconds(process.pid)
                        run = load_run(port, n, args.requests, texts, args.max_tokens)
                        runs[(mode, n)].append({**run, "server_cpu_s": cpu_seconds(process.pid) - cpu, "load": load})
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(30)
    modes = {mode: {str(n): summary(runs[(mode, n)], args.requests) for n in clients} for mode in MODES}
    batched, single = (modes[mode] for mode in MODES)
    result = {
        "benchmark": "openai_server.py",
        "size": "--model-dir" if args.model_dir else args.size,
        "device": device_name(torch.device("cpu")),
        "compute_type": args.compute_type,
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "repeats": args.repeats,
        "modes": modes,
        "speedup_requests_per_s": {
            n: round(batched[n]["requests_per_s"]["median"] / single[n]["requests_per_s"]["median"], 2) for n in map(str, clients)
        },
    }
    print_json_last(result)
    return result


if __name__ == "__main__":
    main()
