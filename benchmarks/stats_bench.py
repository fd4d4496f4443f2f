"""Latency of the statistics routes of the real server over a seeded database (issue 10's targets: /api/stats
<= 50 ms median, every other statistics route <= 100 ms, at 100,000 exams).

Run: python benchmarks/stats_bench.py [--exams 100000] [--patients 30000] [--requests 30] [--db PATH]

It seeds the database with api_bench.py's seeding (AI answers, graded reports for about 60 % of the done exams,
manual reviews for about 5 %), starts `python -m xrayvision` on it (api_bench.Server), and times each statistics
route with one keep-alive client: a warm-up, then --requests sequential requests, median and p95. It prints the
figures and whether each target is met. Not measured yet (issue 10 asks for it): the same while C-STOREs arrive at
a steady rate, and the ingest rate beside it; and the 1,000,000-exam run.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import api_bench  # noqa: E402

ROUTES = (  # path, target median in ms
    ("/api/stats", 50.0),
    ("/api/stats/radiologists", 100.0),
    ("/api/stats/radiologists/monthly_trends", 100.0),
    ("/api/stats/diagnostics", 100.0),
    ("/api/diagnostics/monthly_trends", 100.0),
    ("/api/stats/insights", 100.0),
    ("/api/diagnostics", 100.0),
    ("/api/radiologists", 100.0),
    ("/api/severity", 100.0),
)


async def measure(server: api_bench.Server, requests: int) -> list[tuple[str, float, float, float, int]]:
    results = []
    async with api_bench.session(server) as client:
        for path, target in ROUTES:
            url = server.base + path
            for _ in range(3):  # warm-up: the first answers also fill SQLite's page cache
                await api_bench.get(client, url)
            times, failures = [], 0
            for _ in range(requests):
                ms, status, _body = await api_bench.get(client, url)
                times.append(ms)
                failures += status != 200
            results.append((path, statistics.median(times), api_bench.percentile(times, 95), target, failures))
            print(f"  {path:<42} {statistics.median(times):8.1f} ms median", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    api_bench.add_database_arguments(parser)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="xrv-stats-bench-"))
    server = None
    try:
        db = Path(args.db) if args.db else workdir / "xrayvision.db"
        if not db.exists():
            seconds = asyncio.run(api_bench.seed(db, args.patients, args.exams, args.seed))
            print(f"Seeded {args.exams} exams and {args.patients} patients in {sum(seconds):.1f} s")
        server = api_bench.Server(workdir, db)
        server.start()
        asyncio.run(api_bench.wait_ready(server))
        print(f"Statistics routes over {args.exams} exams (one client, sequential):")
        results = asyncio.run(measure(server, args.requests))
        print(f"\n{'route':<42} {'median':>8} {'p95':>8} {'target':>8}")
        for path, median, p95, target, failures in results:
            verdict = "met" if median <= target and not failures else "NOT met"
            extra = f" ({failures} non-200)" if failures else ""
            print(f"{path:<42} {median:8.1f} {p95:8.1f} {target:8.0f}  {verdict}{extra}")
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
