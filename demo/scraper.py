"""The tiny scraper (`python -m demo.scraper`, started by demo.run): takes a job from the job
list, fetches the product page through a proxy of the active set, writes price_history and
scrape_logs, puts the job back at the end of the list and sleeps min_delay seconds, read
from scraping_config.json each round (tune_backoff writes it). Its configuration comes
from DEMO_* variables; SIGTERM stops it. Prometheus metrics on 127.0.0.1:DEMO_METRICS_PORT
/metrics: scraper_requests_total{status}, scraper_min_delay_seconds."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

import psycopg
import redis
import requests
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

PRICE = re.compile(rb'class="price">([0-9.]+)<')


def main() -> int:
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    registry = CollectorRegistry()
    requests_total = Counter(
        "scraper_requests",
        "Product pages fetched, by HTTP status (0: no answer)",
        ["status"],
        registry=registry,
    )
    min_delay = Gauge("scraper_min_delay_seconds", "Pause between requests", registry=registry)
    start_http_server(int(os.environ["DEMO_METRICS_PORT"]), "127.0.0.1", registry)
    config = Path(os.environ["DEMO_CONFIG"])
    r = redis.Redis.from_url(os.environ["DEMO_REDIS_URL"], socket_timeout=5)
    jobs, active = os.environ["DEMO_JOBS_KEY"], os.environ["DEMO_ACTIVE_KEY"]
    with psycopg.connect(os.environ["DEMO_DSN"], autocommit=True, connect_timeout=5) as conn:
        while not stop:
            delay = _min_delay(config)
            min_delay.set(delay)
            raw = r.lpop(jobs)
            proxies = sorted(m.decode() for m in r.smembers(active))  # type: ignore[union-attr]
            if raw is None or not proxies:
                time.sleep(delay)
                continue
            job = json.loads(raw)  # type: ignore[arg-type]
            proxy = random.choice(proxies)  # noqa: S311 (not security)
            status, price, started = 0, None, time.monotonic()
            try:
                resp = requests.get(
                    job["url"], proxies={"http": proxy}, timeout=3, allow_redirects=False
                )
                status = resp.status_code
                match = PRICE.search(resp.content)
                price = float(match.group(1)) if status == 200 and match else None
            except requests.RequestException:
                status = 0
            ms = (time.monotonic() - started) * 1000
            requests_total.labels(str(status)).inc()
            conn.execute(
                "INSERT INTO scrape_logs (url_id, proxy, status, duration_ms) VALUES (%s,%s,%s,%s)",
                (job["url_id"], proxy, status, ms),
            )
            if price is not None:
                conn.execute(
                    "INSERT INTO price_history (url_id, price) VALUES (%s, %s)",
                    (job["url_id"], price),
                )
            job["enqueued_at"] = time.time()
            r.rpush(jobs, json.dumps(job, sort_keys=True))
            time.sleep(delay)
    return 0


def _min_delay(path: Path) -> float:
    try:
        value = json.loads(path.read_text()).get("min_delay", 1.0)
    except (OSError, ValueError, AttributeError):
        return 1.0
    return min(max(float(value), 0.1), 60.0) if isinstance(value, int | float) else 1.0


if __name__ == "__main__":
    sys.exit(main())
