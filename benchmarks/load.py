"""A closed-loop load generator: C clients, each sending its next request as soon
as the last one answered, for a fixed time. One asyncio loop, aiohttp.

Our own harness rather than locust: the stack and the load share two cores here,
so the generator must cost little CPU per request (it reports what it used), and
the Bluesky and streaming workloads need our own code anyway.
"""

import asyncio
import collections
import dataclasses
import random
import statistics
import threading
import time

import aiohttp


@dataclasses.dataclass
class Sample:
    """One timed run: C clients for `seconds`."""

    clients: int
    seconds: float
    latencies_ms: list[float]
    statuses: collections.Counter
    failures: collections.Counter  # exception class name → count (no HTTP answer at all)
    client_cpu_s: float

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    @property
    def errors_5xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def closed_loop(request, clients: int, seconds: float, warmup: float = 0.5) -> Sample:
    """`request(session, rng)` sends one request and returns its status (reading the whole body)."""
    latencies, statuses, failures = [], collections.Counter(), collections.Counter()
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds
        cpu = None

        async def client(index: int):
            nonlocal cpu
            rng = random.Random(index)
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                if cpu is None and t0 >= measure_from:
                    cpu = time.process_time()
                try:
                    status = await request(session, rng)
                except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                    if t0 >= measure_from:
                        failures[type(err).__name__] += 1
                    continue
                if t0 >= measure_from:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    statuses[status] += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
        cpu_used = time.process_time() - (cpu if cpu is not None else time.process_time())
    return Sample(clients, seconds, latencies, statuses, failures, cpu_used)


def summarise(samples: list[Sample]) -> dict:
    """Median over repeats, with the spread (min–max) of throughput."""
    throughputs = [s.throughput for s in samples]
    statuses = collections.Counter()
    failures = collections.Counter()
    for s in samples:
        statuses.update(s.statuses)
        failures.update(s.failures)
    return {
        "clients": samples[0].clients,
        "repeats": len(samples),
        "throughput": statistics.median(throughputs),
        "throughput_min": min(throughputs),
        "throughput_max": max(throughputs),
        "p50_ms": statistics.median(s.percentile(50) for s in samples),
        "p95_ms": statistics.median(s.percentile(95) for s in samples),
        "p99_ms": statistics.median(s.percentile(99) for s in samples),
        "requests": sum(s.requests for s in samples),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": dict(failures),
        "errors_5xx": sum(s.errors_5xx for s in samples),
        "client_cpu_per_request_ms": 1000 * sum(s.client_cpu_s for s in samples)
                                     / max(1, sum(s.requests for s in samples)),
    }


class Background:
    """Runs `self.run()` in threads from `with` until the block ends; `self.stopping` is set then."""

    threads_wanted = 1

    def __init__(self):
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(self.threads_wanted)]

    def run(self):
        raise NotImplementedError

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join()
