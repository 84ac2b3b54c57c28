"""The service under load, faults and hostile input: `bentoml serve` of a built Bento on
127.0.0.1, loaded by wrk from another process; part of reliability/suite.py (`make chaos`).

- capacity: single digits at 32 connections, as the serving benchmark measures them;
- soak: about 70 % of that capacity for --soak-seconds with mixed traffic (single digits,
  256-digit batches, PNG uploads): errors, p99 of each minute, every worker's RSS at the
  end against its RSS after the warm-up;
- overload: 512 connections: the share refused (BentoML's max_concurrency answers 429
  with a JSON body) and how fast, p99 of the rest, RSS, and how soon it serves normally
  after the load stops;
- a killed worker: SIGKILL one worker under load: errors, seconds until the worker is
  back and serving, throughput before and after;
- logs: bytes the server writes for 10,000 requests, access log off (the default) and on;
- hostile input: requests generated from the OpenAPI schema (schemathesis), the
  malformed-request corpus of the tests, path traversal at /ui/, decompression bombs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from PIL import Image

from bench.serving_bench import model_to_serve, png_of
from harness.mnist import load_mnist
from harness.report import ROOT, Report
from harness.serve import bentoml_serve, schemathesis_run

SECTION = "The service under load and faults"
HOSTILE = "Hostile input"

MIXED_LUA = """
math.randomseed(%(seed)d)
local function body(path)
  local f = io.open(path, "rb"); local data = f:read("*all"); f:close(); return data
end
local single, batch, png = body("%(single)s"), body("%(batch)s"), body("%(png)s")
local json_headers = {["Content-Type"] = "application/json"}
local png_headers = {["Content-Type"] = "image/png"}
request = function()
  local r = math.random()
  if r < 0.8 then return wrk.format("POST", "/predict", json_headers, single)
  elseif r < 0.9 then return wrk.format("POST", "/predict", json_headers, batch)
  else return wrk.format("POST", "/predict_image", png_headers, png) end
end
delay = function() return %(delay_ms)d end
"""


def workers(root_pid: int) -> list[psutil.Process]:
    """The serving worker processes under `bentoml serve` (the ones that load the model)."""
    found = []
    for child in psutil.Process(root_pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker" in " ".join(child.cmdline()) or (
                "serve_http" in " ".join(child.cmdline())
            ):
                found.append(child)
        except psutil.Error:
            continue
    return found


def rss_mb(processes: list[psutil.Process]) -> list[float]:
    out = []
    for process in processes:
        try:
            out.append(process.memory_info().rss / 2**20)
        except psutil.Error:
            out.append(float("nan"))
    return out


def run_wrk_lua(url: str, script: str, seconds: int, connections: int, workdir: Path) -> str:
    path = workdir / "chaos.lua"
    path.write_text(script)
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(path),
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout


def parse(out: str) -> dict:
    def latency(percentile: str) -> float:
        found = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not found:
            return float("nan")
        return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]

    count = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "requests": int(count.group(1)) if count else 0,
        "rate": float(rate.group(1)) if rate else 0.0,
        "p50": latency("50"),
        "p99": latency("99"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, sockets.groups())) if sockets else 0,
    }


def bodies(workdir: Path) -> dict[str, Path]:
    digits, _ = load_mnist("t10k", 512)
    files = {
        "single": json.dumps({"images_b64": base64.b64encode(digits[:1].tobytes()).decode()}),
        "batch": json.dumps({"images_b64": base64.b64encode(digits[:256].tobytes()).decode()}),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = workdir / f"{name}.json"
        paths[name].write_text(text)
    paths["png"] = workdir / "digit.png"
    paths["png"].write_bytes(png_of(digits[0]))
    return paths


def served_normally(url: str, body: Path, timeout: float = 30) -> float:
    """Seconds until a single-digit request is answered 200 in under 100 ms."""
    started = time.monotonic()
    payload = body.read_bytes()
    with httpx.Client(timeout=5) as client:
        while time.monotonic() - started < timeout:
            t = time.perf_counter()
            try:
                response = client.post(
                    f"{url}/predict", content=payload, headers={"Content-Type": "application/json"}
                )
                if response.status_code == 200 and time.perf_counter() - t < 0.1:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
    return float("inf")


def soak(
    report: Report,
    url: str,
    root: int,
    files: dict[str, Path],
    capacity: float,
    seconds: int,
    seed: int,
    workdir: Path,
) -> None:
    connections = 32
    target = 0.7 * capacity
    delay = max(0, round(1000 * connections / target))  # before measuring latency
    script = MIXED_LUA % {**{k: str(v) for k, v in files.items()}, "seed": seed, "delay_ms": delay}
    trial = parse(run_wrk_lua(url, script, 3, connections, workdir))  # calibrate the delay
    if trial["rate"]:
        delay = max(0, round(delay * trial["rate"] / target))
        script = MIXED_LUA % {
            **{k: str(v) for k, v in files.items()},
            "seed": seed,
            "delay_ms": delay,
        }
    warm = rss_mb(workers(root))
    minutes, total = [], {"requests": 0, "errors": 0}
    for _ in range(max(1, seconds // 60)):
        result = parse(run_wrk_lua(url, script, min(seconds, 60), connections, workdir))
        minutes.append(result)
        total["requests"] += result["requests"]
        total["errors"] += result["non2xx"] + result["socket_errors"]
    end = rss_mb(workers(root))
    rate = sum(m["rate"] for m in minutes) / len(minutes)
    report.row(
        SECTION,
        f"soak: {seconds} s of mixed traffic (80 % single digits, 10 % "
        "256-digit batches, 10 % PNG uploads) at about 70 % of capacity",
        f"{rate:,.0f} req/s ({rate / capacity:.0%})",
        "about 70 %",
    )
    report.row(SECTION, "soak: errors", f"{total['errors']} of {total['requests']:,}", "0")
    for i, minute in enumerate(minutes, start=1):
        report.row(SECTION, f"soak: p99, minute {i}", f"{minute['p99']:.1f} ms")
    drift = max(abs(e - w) / w for w, e in zip(warm, end, strict=False)) if warm else 0
    report.row(
        SECTION,
        "soak: largest worker RSS change, end against after warm-up "
        f"({', '.join(f'{w:.0f}' for w in warm)} -> {', '.join(f'{e:.0f}' for e in end)}"
        " MiB)",
        f"{drift:.1%}",
        "≤ 10 %",
    )


def overload(report: Report, url: str, root: int, files: dict[str, Path], workdir: Path) -> None:
    before = rss_mb(workers(root))
    single = files["single"].read_bytes().decode()
    script = (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(single)}\n"
    )
    result = parse(run_wrk_lua(url + "/predict", script, 15, 512, workdir))
    after = rss_mb(workers(root))
    refused = result["non2xx"] / max(result["requests"], 1)
    recovery = served_normally(url, files["single"])
    report.row(
        SECTION,
        "overload: 512 connections, single digits, 15 s: answered",
        f"{result['rate']:,.0f} req/s",
    )
    report.row(
        SECTION, "overload: refused quickly (429, JSON body) / all requests", f"{refused:.1%}"
    )
    report.row(SECTION, "overload: p99 over all answers", f"{result['p99']:.1f} ms")
    report.row(SECTION, "overload: socket errors", str(result["socket_errors"]), "0")
    report.row(
        SECTION,
        "overload: worker RSS before -> after (MiB)",
        f"{', '.join(f'{b:.0f}' for b in before)} -> {', '.join(f'{a:.0f}' for a in after)}",
        "bounded",
    )
    report.row(
        SECTION,
        "overload: seconds after the load until a request is answered in under 100 ms",
        f"{recovery:.2f} s",
        "≤ 1 s",
    )


def worker_crash(
    report: Report, url: str, root: int, files: dict[str, Path], workdir: Path
) -> None:
    single = files["single"].read_bytes().decode()
    script = (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(single)}\n"
    )
    before = parse(run_wrk_lua(url + "/predict", script, 5, 32, workdir))
    victims = workers(root)
    path = workdir / "crash.lua"
    path.write_text(script)
    load = subprocess.Popen(
        ["wrk", "-t2", "-c32", "-d20s", "--latency", "-s", str(path), url + "/predict"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    victims[0].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    back = float("inf")
    while time.monotonic() - killed_at < 15:
        alive = [w for w in workers(root) if w.pid != victims[0].pid]
        if len(alive) >= len(victims):
            back = time.monotonic() - killed_at
            break
        time.sleep(0.1)
    during = parse(load.communicate(timeout=60)[0])
    after = parse(run_wrk_lua(url + "/predict", script, 5, 32, workdir))
    report.row(
        SECTION,
        "worker killed (SIGKILL) under 32 connections: failed requests",
        str(during["non2xx"] + during["socket_errors"]),
    )
    report.row(SECTION, "... seconds until a new worker runs", f"{back:.1f} s")
    report.row(
        SECTION,
        "... throughput after / before (clients kept their connections; the "
        "service closes each after MNIST_REQUESTS_PER_CONNECTION requests)",
        f"{after['rate'] / max(before['rate'], 1):.2f}x",
        "about 1x",
    )


def logs(report: Report, env: dict, workdir: Path, files: dict[str, Path], target: str) -> None:
    single = files["single"].read_bytes().decode()
    script = (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(single)}\n"
    )
    for label, extra in (
        ("access log off (the default)", {}),
        ("access log on (MNIST_ACCESS_LOG=1)", {"MNIST_ACCESS_LOG": "1"}),
    ):
        log_path = workdir / f"log-{len(extra)}.log"
        with bentoml_serve(target, env={**env, **extra}, cwd=ROOT, log_path=log_path) as server:
            size_before = log_path.stat().st_size
            result = parse(run_wrk_lua(server.url + "/predict", script, 5, 32, workdir))
            size = log_path.stat().st_size - size_before
        per = size / max(result["requests"], 1) * 10_000
        report.row(SECTION, f"log bytes for 10,000 requests, {label}", f"{per / 1e3:,.1f} kB")


def hostile_requests(
    report: Report, url: str, root: int, examples: int, seed: int, workdir: Path
) -> None:
    from harness.malformed import MALFORMED

    before = rss_mb(workers(root))
    result = subprocess.run(
        schemathesis_run(url, max(1, examples // 3), seed),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    summary = re.search(r"(\d+) generated", result.stdout)
    server_errors = result.stdout.count("Server error")
    report.row(
        HOSTILE,
        "requests generated from the OpenAPI schema (schemathesis, seeded)",
        summary.group(1) if summary else "see the log",
        f"≥ {examples}",
    )
    report.row(HOSTILE, "... answers with a 5xx status", str(server_errors), "0")
    answered = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for path, body, content_type, _ in MALFORMED:
            response = client.post(path, content=body, headers={"Content-Type": content_type})
            if 400 <= response.status_code < 500 and response.headers.get(
                "content-type", ""
            ).startswith("application/json"):
                answered += 1
        traversal = [
            "/ui/../service.py",
            "/ui/%2e%2e/service.py",
            "/ui/%252e%252e/service.py",
            "/ui/..%5cservice.py",
            "/ui/..\\service.py",
        ]
        not_found = sum(client.get(p).status_code == 404 for p in traversal)
        bomb = Image.new("L", (4000, 4000), 0)
        buffer = io.BytesIO()
        bomb.save(buffer, format="PNG", optimize=True)
        bombed = client.post(
            "/predict_image", content=buffer.getvalue(), headers={"Content-Type": "image/png"}
        ).status_code
        alive = client.get("/readyz").status_code == 200
    after = rss_mb(workers(root))
    report.row(
        HOSTILE,
        "the malformed-request corpus of the tests: JSON 4xx answers",
        f"{answered} of {len(MALFORMED)}",
        "all",
    )
    report.row(
        HOSTILE,
        "path traversal at /ui/ (plain, encoded, double-encoded, backslash): 404s",
        f"{not_found} of {len(traversal)}",
        "all",
    )
    report.row(
        HOSTILE,
        f"a {len(buffer.getvalue()):,}-byte PNG of 4000x4000 blank pixels",
        f"HTTP {bombed}",
        "4xx",
    )
    report.row(
        HOSTILE,
        "worker RSS before -> after the hostile input (MiB)",
        f"{', '.join(f'{b:.0f}' for b in before)} -> {', '.join(f'{a:.0f}' for a in after)}",
        "no jump",
    )
    report.row(HOSTILE, "the server answers /readyz afterwards", "yes" if alive else "**no**")


def champion_bento(path: Path, env: dict) -> str | None:
    """The Bento the package stage recorded in ``path``, if the store ``env`` names
    holds it (a clone's committed bento.json may name a Bento built elsewhere)."""
    if not path.exists():
        return None
    tag = json.loads(path.read_text()).get("bento")
    listed = subprocess.run(
        [sys.executable, "-m", "bentoml", "get", tag, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    return tag if listed.returncode == 0 else None


def run_all(
    report: Report,
    workdir: Path,
    soak_seconds: int = 60,
    examples: int = 1000,
    seed: int = 0,
    service: bool = True,
    hostile: bool = True,
    capacity_seconds: int = 10,
    bento_json: Path = ROOT / "reports/package/bento.json",
) -> None:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    target = champion_bento(bento_json, env)
    if target is None:  # no `make run` yet: the stand-in model, served from source
        env["MNIST_MODEL_TAG"], _ = model_to_serve(env, workdir)
        target = "serving.service:MNISTClassifier"
    files = bodies(workdir)
    with bentoml_serve(target, env=env, cwd=ROOT, log_path=workdir / "serve.log") as server:
        url, root = server.url, server.pid
        single = files["single"].read_bytes().decode()
        script = (
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(single)}\n"
        )
        load = run_wrk_lua(url + "/predict", script, capacity_seconds, 32, workdir)
        capacity = parse(load)["rate"]
        report.row(
            SECTION,
            f"capacity: single digits at 32 connections ({target})",
            f"{capacity:,.0f} req/s",
        )
        if service:
            soak(report, url, root, files, capacity, soak_seconds, seed, workdir)
            overload(report, url, root, files, workdir)
            worker_crash(report, url, root, files, workdir)
        if hostile:
            hostile_requests(report, url, root, examples, seed, workdir)
    if service:
        logs(report, env, workdir, files, target)
