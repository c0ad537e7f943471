"""proxy_pool_health on 500 proxies: concurrent test vs a sequential loop vs the bound.

What runs, all on 127.0.0.1, in the same run:

* 500 proxies: 50 dead (10 %: ports with nothing listening), 25 slow (5 %: 13 answer
  after 1.5 s, past the 1 s per-request timeout, 12 after 0.8 s, over slow_ms 500) and
  425 working. Of the working ones 4 are real proxy processes (3 tinyproxy, 1 proxy.py);
  the other 421, and the 25 slow ones, are lightweight asyncio HTTP proxy listeners in
  one child process (``python -m bench.proxies serve``): each port accepts an
  absolute-URI ``GET http://host:port/path``, waits its delay, forwards the request to the
  origin and relays the answer. The origin is an asyncio HTTP server in the same child.
* The check's own code (``proxy_pool_health``, a private redis-server for the pool) with
  REMEDIATION_PROXIES__WORKERS 64 (the default) and 500.
* A plain sequential loop over the same 500 proxies with the same probe and timeout.
* The bound set by the timeout: ceil(500 / workers) * timeout.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from remediation.checks.proxies import ProxyPoolParams, probe, proxy_pool_health
from remediation.context import CheckContext
from remediation.logging import get_logger
from remediation.settings import ProxySettings, load_settings
from tests.support.base import free_port, listening, wait_for
from tests.support.services import RedisServer

TOTAL, DEAD, TIMED_OUT, SLOW = 500, 50, 13, 12
TIMEOUT_S, SLOW_MS = 1.0, 500.0
TIMED_OUT_DELAY_S, SLOW_DELAY_S = 1.5, 0.8
ORIGIN_BODY = b"<html>price: 10.00</html>\n"


# --- the child process: origin + lightweight proxy listeners -------------------------------


async def _origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(ORIGIN_BODY), ORIGIN_BODY)
        )
        await writer.drain()
    except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _listener(port_name: str, delay: float) -> Any:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            url = urlsplit(target)
            if method != "GET" or url.scheme != "http" or not url.hostname:
                writer.write(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                return
            await asyncio.sleep(delay)
            up_r, up_w = await asyncio.wait_for(
                asyncio.open_connection(url.hostname, url.port or 80), 5
            )
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            up_w.write(
                f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
                f"X-Proxy: {port_name}\r\n\r\n".encode()
            )
            while chunk := await asyncio.wait_for(up_r.read(65536), 10):
                writer.write(chunk)
                await writer.drain()
            up_w.close()
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return relay


async def _serve(delays: list[float]) -> None:
    origin = await asyncio.start_server(_origin, "127.0.0.1", 0, backlog=1024)
    ports = []
    for i, delay in enumerate(delays):
        server = await asyncio.start_server(_listener(f"l{i}", delay), "127.0.0.1", 0)
        ports.append(server.sockets[0].getsockname()[1])
    ready = {"origin": origin.sockets[0].getsockname()[1], "ports": ports}
    print(json.dumps(ready), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF


def serve() -> None:
    """Child entry point: delays as JSON on the command line; ports printed when bound."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    asyncio.run(_serve(json.loads(sys.argv[2])))


# --- the parent: real proxies, the farm, the measurements --------------------------------


def _start_farm(delays: list[float]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.proxies", "serve", json.dumps(delays)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], 60)[0]:
        proc.kill()
        raise TimeoutError("proxy listeners did not start within 60 s")
    return proc, json.loads(proc.stdout.readline())


def _real_proxies(workdir: Path) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """3 tinyproxy + 1 proxy.py processes (fewer if tinyproxy is not installed)."""
    procs, urls = [], []
    tinyproxy = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    for i in range(4):
        port = free_port()
        if i < 3 and Path(tinyproxy).exists():
            conf = workdir / f"tp{i}.conf"
            conf.write_text(
                f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 5\n"
                f'MaxClients 600\nLogLevel Critical\nPidFile "{workdir}/tp{i}.pid"\n'
            )
            cmd = [tinyproxy, "-d", "-c", str(conf)]
        else:
            flags = "--hostname 127.0.0.1 --num-workers 1 --num-acceptors 1 --log-level e".split()
            cmd = [sys.executable, "-m", "proxy", *flags, "--port", str(port)]
            cmd += ["--data-dir", str(workdir / "proxypy")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda port=port: listening(port), 15, 0.05, f"{cmd[0]} on {port}")
        urls.append(f"http://127.0.0.1:{port}")
    return procs, urls


def _pool(workdir: Path) -> tuple[list[Any], list[str], dict[str, int]]:
    """Start everything; return (processes, 500 proxy URLs, the mix)."""
    real_procs, real = _real_proxies(workdir)
    fast = TOTAL - DEAD - TIMED_OUT - SLOW - len(real)
    farm, info = _start_farm([0.0] * fast + [TIMED_OUT_DELAY_S] * TIMED_OUT + [SLOW_DELAY_S] * SLOW)
    used = set(info["ports"])
    dead: list[int] = []
    while len(dead) < DEAD:
        port = free_port()
        if port not in used and port not in dead:
            dead.append(port)
    urls = real + [f"http://127.0.0.1:{p}" for p in info["ports"] + dead]
    random.Random(4).shuffle(urls)  # a pool has no order; slow and dead ones are anywhere
    mix = {
        "real_processes": len(real),
        "listeners_fast": fast,
        "listeners_timing_out": TIMED_OUT,
        "listeners_slow": SLOW,
        "dead_ports": DEAD,
        "origin_port": info["origin"],
    }
    return [*real_procs, farm], urls, mix


def _stop(procs: list[Any]) -> None:
    for proc in procs:
        if proc.stdin:
            proc.stdin.close()
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _check_run(settings: Any, workers: int, run: str) -> dict[str, Any]:
    s = settings.model_copy(
        update={"proxies": settings.proxies.model_copy(update={"workers": workers})}
    )
    start, cpu = time.perf_counter(), time.process_time()
    findings = proxy_pool_health(CheckContext(s, get_logger()), ProxyPoolParams())
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    r = CheckContext(s, get_logger()).redis("self")
    counts = {k.decode(): v.decode() for k, v in r.hgetall("rem:proxy:last_test").items()}
    return {
        "run": run,
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "workers": workers,
        "bound_s": math.ceil(TOTAL / workers) * TIMEOUT_S if workers < TOTAL else TIMEOUT_S,
        "classified": {k: int(counts[k]) for k in ("ok", "slow", "banned", "dead")},
        "findings": sorted(f.kind for f in findings),
    }


def _sequential(cfg: ProxySettings, urls: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    statuses: dict[str, int] = {}
    for url in urls:
        status = probe(url, cfg).status
        statuses[status] = statuses.get(status, 0) + 1
    return {"seconds": round(time.perf_counter() - start, 3), "classified": statuses}


def run() -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rem-bench-proxies-"))
    server = RedisServer().start()
    procs: list[Any] = []
    try:
        procs, urls, mix = _pool(workdir)
        cfg = ProxySettings(
            proxy_list=urls,
            test_url=f"http://127.0.0.1:{mix['origin_port']}/p",
            timeout_seconds=TIMEOUT_S,
            slow_ms=SLOW_MS,
            min_active=2,
        )
        settings = load_settings(state_redis_url=server.url(0), proxies=cfg)
        concurrent = [
            _check_run(settings, 64, "first (pool loaded, no latency history)"),
            _check_run(settings, 64, "second (slowest-first from history)"),
            _check_run(settings, 500, "third"),
        ]
        sequential = _sequential(cfg, urls)
    finally:
        _stop(procs)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    seq = sequential["seconds"]
    return {
        "proxies": TOTAL,
        "mix": mix,
        "timeout_s": TIMEOUT_S,
        "slow_ms": SLOW_MS,
        "check": concurrent,
        "sequential": sequential,
        "speedup_vs_sequential": [round(seq / c["seconds"], 1) for c in concurrent],
        "share_of_bound": [round(c["seconds"] / c["bound_s"], 2) for c in concurrent],
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve()
    else:
        from remediation.logging import configure_logging

        configure_logging("WARNING", stream=sys.stderr)
        print(json.dumps(run(), indent=2))
