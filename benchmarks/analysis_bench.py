"""Analysis throughput of the XRayVision worker against the OpenAI-compatible test server, and our overhead per exam.

Run: python benchmarks/analysis_bench.py [--exams 500] [--latencies 0,500] [--endpoints 1,2] [--concurrency 2]
         [--size 64] [--probe-interval 1] [--profile DIR | --py-spy DIR]

For each model latency (ms) and endpoint count, in one process and one event loop:

1. Starts the endpoint count of `tests/llm_server.py` LLMServer instances with that latency, answering
   /v1/models with 503 (`healthy=False`), and the real app through `build_app()` (store, executor, worker and
   endpoint pool, renderer, receiver) with aiohttp's AppRunner: no HTTP site, the cleanup contexts are all we need.
2. Seeds --exams small synthetic chest CRs (64x64, each its own patient) through the real ingest + renderer path
   (`app[INGEST].add()` as the DICOM receiver calls it, all at once so that ingest batches them; then the
   renderer's PNGs). While no endpoint is healthy the worker waits in `EndpointPool.acquire()` before it claims
   anything, so every exam is still 'queued' (with its PNG) when seeding ends; the script checks that.
3. Starts the clock, marks the servers healthy and probes at once (`app[POOL].probe_all()`, instead of waiting
   for the next PROBE_INTERVAL), and stops the clock when the last exam is announced on the app's event bus
   (`new_exam`, or `error`/`ignore`).
4. Prints exams/s and our overhead per exam: (wall - ideal) x total concurrency / exams, where ideal =
   exams x latency / total concurrency, so at 0 ms the whole time each slot spends per exam counts as overhead.
   It also prints where that time goes, measured from the bus events and the stored answers, and the CPU used.

Why seed a running app with its model servers down, rather than fill a database file and start the app on it:
the pool probes as soon as the app starts, so the worker would begin claiming inside `runner.setup()`, mixed with
the app's own start-up, and the clock would have no clean start. Holding the servers unhealthy gives a start line
we control, and every exam takes the path a received radiograph takes.

The servers' work (parsing the request, checking the PNG with Pillow, answering) runs in this process and loop
too, so it is part of the measured "overhead" (about 0.5 ms of loop CPU per exam; see --py-spy).

It asserts nothing: it prints figures, and a WARNING line for every exam not ended 'done', every unexpected
request count and every problem the test servers recorded. It removes its temporary folder.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import logging
import os
import platform
import pstats
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from aiohttp import web

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))
from _dicom import SyntheticCR  # noqa: E402
from llm_server import LLMServer  # noqa: E402

from xrayvision import events  # noqa: E402
from xrayvision.app import build_app  # noqa: E402
from xrayvision.config import Settings, load_settings  # noqa: E402
from xrayvision.dicom.metadata import describe  # noqa: E402
from xrayvision.keys import BUS, INGEST, POOL, RENDERER, SETTINGS, STORE, WORKER  # noqa: E402
from xrayvision.store import queue  # noqa: E402
from xrayvision.store.instances import Instance  # noqa: E402

MODEL = "medgemma-test"
TARGET_OVERHEAD_MS = 20.0
TARGET_SPEEDUP = 1.8  # 2 endpoints / 1 endpoint, at TARGET_SPEEDUP_LATENCY
TARGET_SPEEDUP_LATENCY = 500
# Seconds. Small, so that the pool would notice the servers soon by itself; each run probes at once anyway when it
# marks them healthy. Probes cost CPU in the same loop (about 2 ms each, client and server), so not too small.
PROBE_INTERVAL = 1.0
PY_SPY_RATE = 250  # samples per second
FINISHED = (events.NEW_EXAM, events.ERROR, events.IGNORE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(root: Path, servers: list[LLMServer], concurrency: int, probe_interval: float) -> Settings:
    overrides = {
        "general": {"xrayvision_db_path": str(root / "xrayvision.db"), "images_dir": str(root / "images")},
        "users": {"admin": f"{secrets.token_urlsafe(16)},admin"},
        "dicom": {"ae_port": str(free_port())},
        "dashboard": {"dashboard_port": str(free_port())},
        "openai": {
            "openai_url_primary": servers[0].base_url,
            "openai_url_secondary": servers[1].base_url if len(servers) > 1 else "",
            "model_name": MODEL, "openai_api_key": "bench-key", "concurrency": str(concurrency),
            "probe_interval": str(probe_interval), "timeout": "60",
        },
    }
    return load_settings(None, environ={}, overrides=overrides, base_dir=root)


# ------------------------------------------------------------------------------------------------ seeding


async def seed(app: web.Application, count: int, size: int) -> list[str]:
    """`count` exams through the real commit path (the receiver's, without the network) and the real renderer."""
    settings = app[SETTINGS]
    images_dir = settings.general.images_dir
    generator = SyntheticCR(size, size, seed=1)

    def prepare() -> list[tuple[Instance, str]]:
        prepared = []
        for serial in range(1, count + 1):
            name = f"{generator.sop_uid(serial)}.dcm"
            path = images_dir / name
            generator.write(path, serial)
            instance = describe(pydicom.dcmread(path), settings.regions, settings.general.timezone)
            prepared.append((instance, name))
        return prepared

    prepared = await asyncio.to_thread(prepare)
    # All at once, as parallel associations would: the ingest commits them in batches of up to 64.
    added = await asyncio.gather(*(app[INGEST].add(instance, name) for instance, name in prepared))
    if not all(added):
        raise RuntimeError("some seeded exams were already stored")
    await asyncio.sleep(0)  # on_new ran for each; the renderer has them all
    await asyncio.wait_for(app[RENDERER].idle.wait(), timeout=300)
    return [instance.uid for instance, _ in prepared]


# ------------------------------------------------------------------------------------------------ measuring


@dataclass
class Tracker:
    """Subscribed to the bus: stamps each exam's processing_start and its end, in the publisher's own call."""

    expected: int
    started: dict[str, float] = field(default_factory=dict)
    spans: list[float] = field(default_factory=list)  # processing_start -> new_exam, seconds
    finished: int = 0
    last: float = 0.0
    all_done: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, event: events.Event) -> None:
        now = time.perf_counter()
        uid = event.payload.get("uid", "")
        if event.name == events.PROCESSING_START:
            self.started[uid] = now
        elif event.name in FINISHED:
            if event.name == events.NEW_EXAM and uid in self.started:
                self.spans.append(now - self.started[uid])
            self.finished += 1
            self.last = now
            if self.finished >= self.expected:
                self.all_done.set()


@dataclass
class Run:
    latency_ms: int
    endpoints: int
    slots: int
    exams: int
    seed_s: float = 0.0
    wall: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    worker_avg: float = 0.0  # app[WORKER].timings()["avg_latency"]: the last 200 requests, rounded to 10 ms
    request_ms: float = 0.0  # mean stored latency over all answers (the worker's request time)
    span_ms: float = 0.0  # mean processing_start -> new_exam
    per_endpoint: dict[str, int] = field(default_factory=dict)
    loop_cpu: float = 0.0  # seconds of CPU of the event loop's thread during the run
    process_cpu: float = 0.0  # seconds of CPU of the whole process (all threads) during the run
    chat_requests: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.latency_ms} ms, {self.endpoints} endpoint{'s' if self.endpoints > 1 else ''}"

    @property
    def rate(self) -> float:
        return self.exams / self.wall if self.wall else 0.0

    @property
    def ideal(self) -> float:
        return self.exams * self.latency_ms / 1000 / self.slots

    @property
    def slot_ms(self) -> float:
        """What one slot spent per exam, in ms."""
        return self.wall * self.slots / self.exams * 1000

    @property
    def overhead_ms(self) -> float:
        return (self.wall - self.ideal) * self.slots / self.exams * 1000


async def run_one(root: Path, latency_ms: int, endpoints: int, args: argparse.Namespace) -> Run:
    exams = args.exams
    run = Run(latency_ms, endpoints, endpoints * args.concurrency, exams)
    servers = [LLMServer(model=MODEL, latency=latency_ms / 1000, healthy=False) for _ in range(endpoints)]
    runner: web.AppRunner | None = None
    try:
        for server in servers:
            await server.start()
        app = build_app(make_settings(root, servers, args.concurrency, args.probe_interval))
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()  # the cleanup contexts: store, executor, pool + worker, ingest + renderer + receiver

        t = time.perf_counter()
        uids = await seed(app, exams, args.size)
        run.seed_s = time.perf_counter() - t
        counts = await queue.counts(app[STORE])
        queued = await app[STORE].fetch_value(
            "SELECT COUNT(*) FROM exams WHERE status = 'queued' AND image IS NOT NULL")
        if queued != len(uids) or counts != {"queued": len(uids)}:
            run.problems.append(f"before the start {queued} of {len(uids)} exams were queued with a PNG: {counts}")

        tracker = Tracker(len(uids))
        unsubscribe = app[BUS].subscribe(tracker)
        gc.collect()
        label = f"{latency_ms}ms-{endpoints}ep"
        async with profiled(args, label, run):
            cpu0, proc0 = time.thread_time(), time.process_time()
            start = time.perf_counter()
            for server in servers:
                server.healthy = True
            # The worker takes slots as soon as the pool says an endpoint is up. A probe of the pool's own loop
            # answered 503 just before the flip could land after ours: probe until all say healthy.
            for _ in range(100):
                await app[POOL].probe_all()
                if all(e.healthy for e in app[POOL].endpoints):
                    break
            else:
                run.problems.append(f"endpoints not healthy after 100 probes: {app[POOL].status()['health']}")
            timeout = max(60.0, 3 * run.ideal + 60)
            try:
                await asyncio.wait_for(tracker.all_done.wait(), timeout=timeout)
            except TimeoutError:
                run.problems.append(f"only {tracker.finished} of {len(uids)} exams finished within {timeout:.0f} s")
            end = tracker.last if tracker.finished else time.perf_counter()
            run.loop_cpu, run.process_cpu = time.thread_time() - cpu0, time.process_time() - proc0
        unsubscribe()
        run.wall = end - start

        store = app[STORE]
        run.statuses = await queue.counts(store)
        if run.statuses.get("done", 0) != len(uids):
            run.problems.append(f"not every exam ended 'done': {run.statuses}")
        stats = await store.fetch_one("SELECT AVG(latency) AS ms, COUNT(*) AS n FROM ai_reports")
        run.request_ms = float(stats["ms"] or 0.0) if stats else 0.0
        run.per_endpoint = {r["endpoint"]: r["n"] for r in await store.fetch_all(
            "SELECT endpoint, COUNT(*) AS n FROM ai_reports GROUP BY endpoint ORDER BY endpoint")}
        run.worker_avg = app[WORKER].timings()["avg_latency"]
        run.span_ms = statistics.fmean(tracker.spans) * 1000 if tracker.spans else 0.0
        run.chat_requests = sum(s.chat_count for s in servers)
        if run.chat_requests != len(uids):
            run.problems.append(f"the servers got {run.chat_requests} chat requests for {len(uids)} exams")
        for i, server in enumerate(servers):
            run.problems.extend(f"server {i + 1}: {p}" for p in server.problems[:5])
            if len(server.problems) > 5:
                run.problems.append(f"server {i + 1}: ... {len(server.problems) - 5} more problems")
    finally:
        try:
            if runner is not None:
                await runner.cleanup()
        except Exception as exc:  # the figures are measured by now: report, do not lose them
            run.problems.append(f"the app's cleanup failed: {exc!r}")
        for server in servers:
            await server.stop()
    return run


# ------------------------------------------------------------------------------------------------ profiling


@contextlib.asynccontextmanager
async def profiled(args: argparse.Namespace, label: str, run: Run) -> AsyncIterator[None]:
    """cProfile (--profile) or py-spy (--py-spy) around the measured part of one run only (the block sets
    run.loop_cpu, by which py-spy's proportions are turned into ms)."""
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()
        path = args.profile / f"analysis-{label}.prof"
        profiler.dump_stats(path)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(f"  cProfile of the event loop's thread, {label} (saved to {path}), top 25 by own time:")
        print("\n".join("    " + line for line in out.getvalue().splitlines() if line.strip()))
    elif args.py_spy:
        path = args.py_spy / f"analysis-{label}.txt"
        with open(path.with_suffix(".log"), "wb") as log:
            spy = await asyncio.create_subprocess_exec(
                "py-spy", "record", "--pid", str(os.getpid()), "--rate", str(PY_SPY_RATE), "--format", "raw",
                "--output", str(path), stdout=log, stderr=asyncio.subprocess.STDOUT)
        await asyncio.sleep(1.0)  # let it attach before the clock starts
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile when interrupted
            try:
                await asyncio.wait_for(spy.wait(), timeout=30)
            except TimeoutError:
                spy.kill()
                await spy.wait()
        if path.exists():
            print_loop_samples(path, run)
        else:
            print(f"  py-spy wrote nothing for {label}; see {path.with_suffix('.log')}")
    else:
        yield


# (what a stack of the event loop's thread is spent on, tested in this order)
COMPONENTS = [
    ("endpoint health probes", ("EndpointPool._probe",)),
    ("openai: request params transform", ("openai/_utils/_transform.py",)),
    ("openai: response parsing", ("openai/_response.py", "_process_response")),
    ("openai client + httpx2: the rest", ("openai/", "httpx2/", "httpcore2/", "h11/", "anyio/")),
    ("test server (llm_server.py, aiohttp server)", ("llm_server.py", "aiohttp/")),
    ("xrayvision worker, pool, store (loop side)", ("xrayvision/", "aiosqlite/")),
]


def print_loop_samples(path: Path, run: Run) -> None:
    """Where the event loop's thread spent its CPU, from py-spy's collapsed stacks: each component's share of the
    busy samples, times the loop CPU per exam that the thread's own clock measured. (py-spy pauses the process
    for every sample, which slows the run; the shares stay right. Its --nonblocking mode was tried: it drops
    most samples of a busy thread and keeps those of a waiting one, so it overstates the time spent waiting.)"""
    busy = 0
    parts: dict[str, int] = dict.fromkeys([name for name, _ in COMPONENTS] + ["asyncio and other"], 0)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if "_run_once (asyncio/base_events.py" not in stack or not count.isdigit():
            continue  # another thread (aiosqlite, executor), or not a stack line
        if stack.rsplit(";", 1)[-1].split(" ", 1)[0].endswith("Selector.select"):
            continue  # waiting for events
        n = int(count)
        busy += n
        name = next((name for name, marks in COMPONENTS if any(m in stack for m in marks)), "asyncio and other")
        parts[name] += n
    if not busy:
        print(f"  py-spy: no busy samples of the event loop's thread in {path}")
        return
    per_exam = run.loop_cpu / run.exams * 1000
    print(f"  py-spy, {run.label} ({path}): {busy} busy samples of the event loop's thread; its "
          f"{per_exam:.2f} ms of CPU per exam by component:")
    for name, n in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<46} {n / busy * per_exam:6.2f} ms  {n / busy * 100:5.1f} %")


# ------------------------------------------------------------------------------------------------ report


def print_runs(runs: list[Run]) -> None:
    print()
    print("Analysis throughput (wall: from marking the servers healthy to the last new_exam event; "
          "overhead per exam = (wall - ideal) x slots / exams, ideal = exams x latency / slots)")
    header = (f"{'latency':>7} {'endpts':>6} {'slots':>5} {'exams':>5} {'wall s':>8} {'exams/s':>8} "
              f"{'ideal s':>8} {'overhead ms/exam':>16} {'worker avg s':>12} {'request ms':>10} "
              f"{'start->done ms':>14} {'loop CPU ms/exam':>16}")
    print(header)
    print("-" * len(header))
    for r in runs:
        print(f"{r.latency_ms:>5}ms {r.endpoints:>6} {r.slots:>5} {r.exams:>5} {r.wall:>8.2f} {r.rate:>8.2f} "
              f"{r.ideal:>8.2f} {r.overhead_ms:>16.1f} {r.worker_avg:>12.2f} {r.request_ms:>10.1f} "
              f"{r.span_ms:>14.1f} {r.loop_cpu / r.exams * 1000:>16.2f}")
    print()
    print("Where each slot's time per exam goes (ms): slot = wall x slots / exams; model = the server's latency;")
    print("  http = request (as the worker timed it) - model; prompt+store = start->done - request;")
    print("  claim+wait = slot - start->done (claiming, the slot's hand-over, and waiting for the busy loop)")
    header = (f"{'run':<22} {'slot':>7} {'model':>7} {'http':>7} {'prompt+store':>12} {'claim+wait':>10} "
              f"{'process CPU ms/exam':>19} {'answers per endpoint':<24}")
    print(header)
    print("-" * len(header))
    for r in runs:
        http = r.request_ms - r.latency_ms
        prompt = r.span_ms - r.request_ms
        claim = r.slot_ms - r.span_ms
        spread = ", ".join(f"{k} {v}" for k, v in r.per_endpoint.items())
        print(f"{r.label:<22} {r.slot_ms:>7.1f} {r.latency_ms:>7.1f} {http:>7.1f} {prompt:>12.1f} {claim:>10.1f} "
              f"{r.process_cpu / r.exams * 1000:>19.2f} {spread:<24}")
    for r in runs:
        for problem in r.problems:
            print(f"WARNING: {r.label}: {problem}")

    print()
    print("Targets:")
    for r in runs:
        verdict = "met" if r.overhead_ms <= TARGET_OVERHEAD_MS else "NOT met"
        print(f"  overhead, {r.label:<22}: {r.overhead_ms:6.1f} ms per exam, target <= {TARGET_OVERHEAD_MS:.0f} ms: "
              f"{verdict}")
    by_key = {(r.latency_ms, r.endpoints): r for r in runs}
    one, two = by_key.get((TARGET_SPEEDUP_LATENCY, 1)), by_key.get((TARGET_SPEEDUP_LATENCY, 2))
    if one and two and one.rate:
        speedup = two.rate / one.rate
        verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
        print(f"  speed-up 2 endpoints / 1 endpoint at {TARGET_SPEEDUP_LATENCY} ms: {speedup:.2f}x, "
              f"target >= {TARGET_SPEEDUP:.1f}x: {verdict}")
    else:
        print(f"  speed-up at {TARGET_SPEEDUP_LATENCY} ms: not measured (needs --latencies with "
              f"{TARGET_SPEEDUP_LATENCY} and --endpoints 1,2)")


# ------------------------------------------------------------------------------------------------ main


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, not {text!r}")
    return values


async def amain(args: argparse.Namespace) -> list[Run]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="xrv-analysis-bench-", dir=args.tmpdir) as tmp:
        for latency in args.latencies:
            for endpoints in args.endpoints:
                root = Path(tmp) / f"{latency}ms-{endpoints}ep"
                (root / "images").mkdir(parents=True)
                r = await run_one(root, latency, endpoints, args)
                runs.append(r)
                print(f"  {r.label:<22}: seeded {r.exams} exams in {r.seed_s:5.2f} s; analysed in {r.wall:7.2f} s "
                      f"= {r.rate:7.2f} exams/s, overhead {r.overhead_ms:6.1f} ms/exam"
                      f"{'  (problems: see below)' if r.problems else ''}", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Analysis throughput and overhead of the XRayVision worker")
    parser.add_argument("--exams", type=int, default=500, help="exams per run (default 500)")
    parser.add_argument("--latencies", type=int_list, default=[0, 500],
                        help="model latencies in ms, comma-separated (default 0,500)")
    parser.add_argument("--endpoints", type=int_list, default=[1, 2],
                        help="endpoint counts, comma-separated, each 1 or 2 (default 1,2)")
    parser.add_argument("--concurrency", type=int, default=2, help="CONCURRENCY of each endpoint (default 2)")
    parser.add_argument("--size", type=int, default=64, help="side of the synthetic square CRs, pixels (default 64)")
    parser.add_argument("--probe-interval", type=float, default=PROBE_INTERVAL,
                        help=f"PROBE_INTERVAL of the endpoint pool, seconds (default {PROBE_INTERVAL})")
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="cProfile the event loop's thread during each measured run; print the top 25 and "
                             "save .prof files in DIR")
    parser.add_argument("--py-spy", metavar="DIR", type=Path,
                        help="record each measured run with py-spy (pip install py-spy) attached to this process: "
                             "raw collapsed stacks in DIR, and a summary of the event loop's time by component")
    parser.add_argument("--tmpdir", type=Path, help="where the temporary folder goes (default: the system's)")
    args = parser.parse_args(argv)
    if args.exams < 1 or args.concurrency < 1 or args.size < 8:
        parser.error("--exams and --concurrency must be positive, --size at least 8")
    if any(n not in (1, 2) for n in args.endpoints):
        parser.error("--endpoints takes 1 and/or 2 (PRIMARY and SECONDARY)")
    if args.profile and args.py_spy:
        parser.error("--profile and --py-spy: one at a time")
    if args.py_spy and not shutil.which("py-spy"):
        parser.error("py-spy not found: pip install py-spy")
    if args.probe_interval < 0.05:
        parser.error("--probe-interval must be at least 0.05 (the server's own lower limit)")
    for folder in (args.profile, args.py_spy):
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    # The renderer decodes with view_only=True, and pydicom warns on every 12-in-16-bit image that it cannot
    # return a view; one line per exam would bury what matters.
    logging.getLogger("pydicom").setLevel(logging.ERROR)

    began = time.perf_counter()
    print(f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
          f"{platform.python_version()}")
    print(f"  {args.exams} exams per run ({args.size}x{args.size} CR, each its own patient, region chest), "
          f"CONCURRENCY {args.concurrency} per endpoint; the app, its worker and the test servers share one "
          "process and event loop", flush=True)
    runs = asyncio.run(amain(args))
    print_runs(runs)
    print(f"\nTotal time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
