"""DICOM ingest throughput and memory of the XRayVision server, with dcmtk's storescp as the baseline.

Run: python benchmarks/ingest_bench.py [--large 200] [--small 500] [--rss-images 1000]

1. Generates synthetic CR files (2000x2500 and 512x512, 16 bits allocated / 12 stored, MONOCHROME2, Explicit
   VR Little Endian, each with its own SOP/Study/Series UIDs and PatientID) in a temporary folder.
2. For each size, sends them with dcmtk's storescu over one association, then over 4 parallel associations
   (4 storescu processes, each with a quarter of the files, started together), to dcmtk's storescp and to the
   real server (`python -m xrayvision --config ...`, a fresh one with its own database for every run). The time
   runs from the first storescu start to the last storescu exit.
3. Prints images/s, MB/s and the ratio ours/storescp, and whether the throughput targets are met.
4. Sends --rss-images large images (all with distinct UIDs) to a fresh server, waits until its renderer has
   caught up, and prints its RSS (children included) and the peak RSS sampled every 0.5 s, against the target.

It asserts nothing: it prints figures. It stops everything it started and removes its temporary folder.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:
    import psutil
except ImportError:  # a hint rather than a traceback
    sys.exit("ingest_bench needs psutil: pip install psutil")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dicom import SyntheticCR  # noqa: E402
from _process import stop_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DCMTK = Path(os.environ.get("DCMTK_BIN", "/usr/bin"))  # not pynetdicom's console scripts of the same names
STORESCU = DCMTK / "storescu"
STORESCP = DCMTK / "storescp"
ECHOSCU = DCMTK / "echoscu"

OUR_AET = "XRAYVISION"
SCP_AET = "STORESCP"
SCU_AET = "BENCHSCU"
# storescp: bit-preserving (+B) streams each data set into its file as the PDVs arrive (no re-encoding), at
# dcmtk's largest PDU (our server, MAX_PDU 0, gets 128 KiB PDUs from storescu too); -dhl skips reverse DNS.
# It does not fsync. Single process: associations are served one after another (unless --storescp-fork).
STORESCP_OPTIONS = ["+B", "-pdu", "131072", "-dhl"]
# storescu: only the contexts the files need, a generous ACSE timeout (a single-process storescp makes the other
# associations wait), files found by scanning folders (+sd +r: no argv limit).
STORESCU_OPTIONS = ["-R", "-ta", "300", "-aet", SCU_AET]
# dcmtk as Debian ships it leaves Nagle's algorithm on unless TCP_NODELAY=1 is in the environment: storescp's
# small C-STORE responses then wait for a delayed ACK (~40 ms each), about 22 images/s per association. The
# targets are set against storescp as packaged, the way a site runs it; --dcmtk-nodelay measures dcmtk tuned
# (then storescp, C++ with no fsync, takes 1,000+ small images/s, beyond any Python receiver).
DCMTK_ENV: dict[str, str] = {}
SERVER_ENV: dict[str, str] = {}  # --server-env: extra environment for our server (malloc tuning experiments)

TARGET_RATIO = {"small": 3.0, "large": 1.5}
TARGET_RSS_MB = 200
MB = 1e6  # files and RSS alike, in 10^6 bytes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def rss_of(proc: psutil.Process) -> int:
    """Resident set of a process and all its descendants, in bytes (0 once it is gone)."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class RssSampler:
    """Samples a process tree's RSS every `interval` seconds in a thread and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_of(self.proc))
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------ receivers


class Receiver:
    """A DICOM receiver process that the benchmark starts, and stops."""

    name = ""
    aet = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "receiver.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        """Write what the process needs before it starts (folders, configuration)."""

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.prepare()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=self.environment(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} at start:\n{tail(self.log)}")
            echo = subprocess.run(
                [str(ECHOSCU), "-aet", SCU_AET, "-aec", self.aet, "-to", "2", "127.0.0.1", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if echo.returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer C-ECHO within {timeout:.0f} s:\n{tail(self.log)}")

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self.proc = None

    def check(self, sent: int) -> str:
        """Empty when everything sent was kept, else a warning."""
        return ""


class StoreSCP(Receiver):
    name = "storescp"
    aet = SCP_AET

    def __init__(self, workdir: Path, fork: bool) -> None:
        super().__init__(workdir)
        self.fork = fork
        self.out = workdir / "received"

    def environment(self) -> dict[str, str]:
        return {**os.environ, **DCMTK_ENV}

    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        extra = ["--fork"] if self.fork else []
        return [str(STORESCP), *STORESCP_OPTIONS, *extra, "-aet", self.aet, "-od", str(self.out), str(self.port)]

    def stop(self) -> None:
        # With --fork, children serving associations belong to this run: end them by their own pids.
        children: list[psutil.Process] = []
        if self.proc is not None and self.fork:
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(self.proc.pid).children(recursive=True)
        super().stop()
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def check(self, sent: int) -> str:
        kept = sum(1 for _ in self.out.iterdir())
        return "" if kept == sent else f"storescp wrote {kept} files, {sent} were sent"


class OurServer(Receiver):
    name = "ours"
    aet = OUR_AET

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.db = workdir / "xrayvision.db"
        self.images = workdir / "images"
        self.config = workdir / "xrayvision.cfg"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}  # only our config counts
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return {**env, **SERVER_ENV}

    def prepare(self) -> None:
        web_port = free_port()
        while web_port == self.port:
            web_port = free_port()
        self.config.write_text(
            "[general]\n"
            f"XRAYVISION_DB_PATH = {self.db}\n"
            f"XRAYVISION_BACKUP_DIR = {self.workdir / 'backup'}\n"
            f"IMAGES_DIR = {self.images}\n"
            "[dicom]\n"
            f"AE_TITLE = {OUR_AET}\n"
            f"AE_PORT = {self.port}\n"
            "BIND_ADDRESS = 127.0.0.1\n"
            "MAX_PDU = 0\n"
            "[dashboard]\n"
            f"DASHBOARD_PORT = {web_port}\n"
            "BIND_ADDRESS = 127.0.0.1\n"
            "[users]\n"
            f"admin = {secrets.token_urlsafe(24)},admin\n"
        )

    def command(self) -> list[str]:
        return [sys.executable, "-m", "xrayvision", "--config", str(self.config)]

    def query(self, sql: str) -> int:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()

    def exam_rows(self) -> int:
        return self.query("SELECT COUNT(*) FROM exams")

    def unrendered(self) -> int:
        return self.query("SELECT COUNT(*) FROM exams WHERE image IS NULL AND status = 'queued'")

    def check(self, sent: int) -> str:
        rows = self.exam_rows()
        return "" if rows == sent else f"ours has {rows} exam rows, {sent} files were sent"


# ------------------------------------------------------------------------------------------------ sending


def send(port: int, aet: str, batches: Sequence[Sequence[Path]], logdir: Path) -> tuple[float, list[str]]:
    """One storescu (one association) per batch, all started together; folders in a batch are scanned
    recursively. Returns the seconds from the first start to the last exit, and any problems."""
    logdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **DCMTK_ENV}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            scan = ["+sd", "+r"] if any(p.is_dir() for p in batch) else []
            cmd = [str(STORESCU), *STORESCU_OPTIONS, *scan, "-aec", aet, "127.0.0.1", str(port), *map(str, batch)]
            with open(logdir / f"storescu{i}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT))
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - start
    finally:
        for p in procs:  # only after an interruption: ours, by pid
            if p.poll() is None:
                p.kill()
                p.wait()
    problems = [f"storescu #{i} exited with {code}: {tail(logdir / f'storescu{i}.log', 5)}"
                for i, code in enumerate(codes) if code != 0]
    return seconds, problems


def settle() -> None:
    """Between runs: write back what the previous receiver left dirty in the page cache, so the next run does
    not pay for it."""
    os.sync()
    time.sleep(0.5)


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None) -> Iterator[None]:
    """Record the process with py-spy (raw collapsed stacks, all threads) while the block runs."""
    if out is None:
        yield
        return
    with open(out.with_suffix(".log"), "wb") as log:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--threads",
                                "--nonblocking", "--output", str(out)], stdout=log, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # let it attach
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its profile when interrupted
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


# ------------------------------------------------------------------------------------------------ file sets


class Serials:
    """Serial numbers for the files' identities: every file ever written or restamped gets a new one."""

    def __init__(self) -> None:
        self._next = 1

    def take(self) -> int:
        value, self._next = self._next, self._next + 1
        return value


@dataclass
class FileSet:
    label: str  # "small" or "large"
    geometry: str  # columns x rows
    generator: SyntheticCR
    parts: list[Path]  # one folder per parallel association
    files: list[Path] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.parts[0].parent

    @property
    def total_bytes(self) -> int:
        return len(self.files) * self.generator.file_size


def make_files(root: Path, label: str, rows: int, columns: int, count: int, parts: int, seed: int,
               serials: Serials) -> FileSet:
    generator = SyntheticCR(rows, columns, seed=seed)
    folders = [root / label / f"part{i}" for i in range(parts)]
    for folder in folders:
        folder.mkdir(parents=True)
    fs = FileSet(label, f"{columns}x{rows}", generator, folders)
    for i in range(count):
        path = folders[i % parts] / f"{label[0].upper()}{i:06d}.dcm"
        generator.write(path, serials.take())
        fs.files.append(path)
    return fs


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class Result:
    receiver: str
    size: str
    associations: int
    images: int
    nbytes: int
    seconds: float
    problems: list[str]
    peak_rss: int | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / MB / self.seconds


def run_once(receiver: Receiver, fs: FileSet, associations: int, logdir: Path, profile_dir: Path | None) -> Result:
    """One fresh receiver, one send of the whole file set, then the receiver is stopped and its folder removed."""
    settle()
    receiver.start()
    try:
        batches = [[fs.root]] if associations == 1 else [[part] for part in fs.parts]
        ours = isinstance(receiver, OurServer)
        profile = profile_dir / f"ours-{fs.label}-{associations}assoc.txt" if ours and profile_dir else None
        with py_spy(receiver.proc.pid, profile), RssSampler(receiver.proc.pid) as sampler:
            seconds, problems = send(receiver.port, receiver.aet, batches, logdir)
        warning = receiver.check(len(fs.files))
        if warning:
            problems.append(warning)
        return Result(receiver.name, fs.label, associations, len(fs.files), fs.total_bytes, seconds, problems,
                      sampler.peak if ours else None)
    finally:
        receiver.stop()
        shutil.rmtree(receiver.workdir, ignore_errors=True)


@dataclass
class RssReport:
    associations: int
    sent: int = 0
    rounds: int = 0
    rows: int = 0
    errors: int = 0
    unrendered: int = 0
    ingest_s: float = 0.0
    catch_up_s: float = 0.0
    idle_rss: int = 0
    rss_after_ingest: int = 0
    final_rss: int = 0
    peak_rss: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)


def rss_run(root: Path, fs: FileSet, total: int, associations: int, serials: Serials,
            render_timeout: float) -> RssReport:
    """Send `total` large images with distinct UIDs to one fresh server (rounds of the large file set, given new
    identities in place between rounds), wait until its renderer has caught up, then read its RSS."""
    settle()
    report = RssReport(associations)
    server = OurServer(root / "rss-ours")
    server.start()
    try:
        proc = psutil.Process(server.proc.pid)
        time.sleep(1.0)
        report.idle_rss = rss_of(proc)
        with RssSampler(server.proc.pid) as sampler:
            start = time.perf_counter()
            while report.sent < total:
                count = min(len(fs.files), total - report.sent)
                chosen = fs.files[:count]
                if report.rounds:  # the first round sends the files as generated, later ones new identities
                    for path in chosen:
                        fs.generator.restamp(path, serials.take())
                if count == len(fs.files):
                    batches = [[part] for part in fs.parts]
                else:
                    batches = [b for b in (chosen[i::associations] for i in range(associations)) if b]
                _, problems = send(server.port, server.aet, batches, root / "logs" / f"rss-round{report.rounds}")
                report.problems.extend(problems)
                report.sent += count
                report.rounds += 1
            report.ingest_s = time.perf_counter() - start
            report.rss_after_ingest = rss_of(proc)
            deadline = time.monotonic() + render_timeout
            report.unrendered = server.unrendered()
            while report.unrendered and time.monotonic() < deadline:
                time.sleep(1.0)
                report.unrendered = server.unrendered()
            report.catch_up_s = time.perf_counter() - start
            time.sleep(1.0)  # the last job's buffers go
            report.final_rss = rss_of(proc)
        report.peak_rss, report.samples = sampler.peak, sampler.samples
        report.rows = server.exam_rows()
        report.errors = server.query("SELECT COUNT(*) FROM exams WHERE status = 'error'")
        if report.unrendered:
            report.problems.append(f"{report.unrendered} exams still unrendered after {render_timeout:.0f} s")
        if report.rows != report.sent:
            report.problems.append(f"ours has {report.rows} exam rows, {report.sent} images were sent")
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
    return report


# ------------------------------------------------------------------------------------------------ report


def print_setup(storescp_fork: bool) -> None:
    def version(tool: Path) -> str:
        out = subprocess.run([str(tool), "--version"], capture_output=True, text=True).stdout
        return out.split("$")[1].strip() if "$" in out else "?"

    nagle = "off (--dcmtk-nodelay)" if DCMTK_ENV.get("TCP_NODELAY") == "1" else "on (as packaged)"
    print(f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
          f"{platform.python_version()}, {version(STORESCP)}")
    processes = "a process per association" if storescp_fork else "one process: associations one after another"
    print(f"  storescp: {' '.join(STORESCP_OPTIONS + (['--fork'] if storescp_fork else []))} "
          f"(writes each file as it arrives; no fsync; {processes})")
    print(f"  storescu: {' '.join(STORESCU_OPTIONS)} +sd +r (4 associations = 4 storescu processes)")
    print(f"  dcmtk environment {' '.join(f'{k}={v}' for k, v in DCMTK_ENV.items())}: Nagle {nagle} in "
          f"storescu and storescp")
    print("  ours: python -m xrayvision, MAX_PDU 0, fresh database and images folder per run; fsyncs each file and "
          "its folder and commits its row (synchronous=FULL) before answering; renders PNGs in the background "
          "meanwhile" + (f"; environment {' '.join(f'{k}={v}' for k, v in SERVER_ENV.items())}" if SERVER_ENV else ""))


def print_throughput(results: list[Result], sets: dict[str, FileSet]) -> None:
    print()
    print("Ingest throughput (storescu -> receiver on 127.0.0.1; time from the first storescu start to the last "
          "exit; MB = 10^6 bytes of .dcm files; peak RSS of our server sampled every 0.5 s)")
    header = (f"{'size':<18} {'assoc':>5}  {'receiver':<8} {'images':>6} {'MB':>7} {'seconds':>8} "
              f"{'images/s':>9} {'MB/s':>7} {'ours/storescp':>13} {'peak RSS':>9}")
    print(header)
    print("-" * len(header))
    by_key = {(r.receiver, r.size, r.associations): r for r in results}
    for r in results:
        base = by_key.get(("storescp", r.size, r.associations))
        ratio = f"{r.images_per_s / base.images_per_s:.2f}" if r.receiver == "ours" and base else ""
        rss = f"{r.peak_rss / MB:.0f} MB" if r.peak_rss else ""
        print(f"{r.size + ' ' + sets[r.size].geometry:<18} {r.associations:>5}  {r.receiver:<8} {r.images:>6} "
              f"{r.nbytes / MB:>7.0f} {r.seconds:>8.2f} {r.images_per_s:>9.1f} {r.mb_per_s:>7.1f} "
              f"{ratio:>13} {rss:>9}")
    for r in results:
        for problem in r.problems:
            print(f"WARNING: {r.receiver}, {r.size} files, {r.associations} association(s): {problem}")
    print()
    print("Throughput targets (ours/storescp in images/s):")
    for size in ("small", "large"):
        for assoc in sorted({r.associations for r in results}):
            ours, base = by_key.get(("ours", size, assoc)), by_key.get(("storescp", size, assoc))
            if ours and base:
                ratio = ours.images_per_s / base.images_per_s
                verdict = "met" if ratio >= TARGET_RATIO[size] else "NOT met"
                print(f"  {size} files, {assoc} association{'s' if assoc > 1 else ' '}: ratio {ratio:5.2f}, "
                      f"target >= {TARGET_RATIO[size]:.1f}: {verdict}")


def print_rss(report: RssReport, fs: FileSet) -> None:
    print()
    print(f"Memory: {report.sent} large images ({fs.geometry}, distinct UIDs) sent to one fresh server in "
          f"{report.rounds} round(s) of {report.associations} parallel associations")
    print(f"  ingest {report.ingest_s:.1f} s ({report.sent / report.ingest_s:.1f} images/s); renderer caught up "
          f"{report.catch_up_s:.1f} s after the first image; exam rows {report.rows}, status 'error' {report.errors}")
    print(f"  RSS idle, before sending:           {report.idle_rss / MB:6.1f} MB")
    print(f"  RSS when the last storescu exited:  {report.rss_after_ingest / MB:6.1f} MB")
    print(f"  peak RSS (sampled every 0.5 s):     {report.peak_rss / MB:6.1f} MB ({report.samples} samples)")
    verdict = "met" if report.final_rss / MB <= TARGET_RSS_MB else "NOT met"
    print(f"  RSS after the renderer caught up:   {report.final_rss / MB:6.1f} MB   target <= {TARGET_RSS_MB} MB: "
          f"{verdict}")
    print("  (RSS of the server process and its children; MB = 10^6 bytes)")
    for problem in report.problems:
        print(f"WARNING: memory run: {problem}")


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DICOM ingest throughput and memory: XRayVision vs dcmtk storescp")
    parser.add_argument("--large", type=int, default=200, help="2000x2500 files per throughput run (default 200)")
    parser.add_argument("--small", type=int, default=500, help="512x512 files per throughput run (default 500)")
    parser.add_argument("--rss-images", type=int, default=1000,
                        help="large images sent for the memory measurement (default 1000; 0 skips it)")
    parser.add_argument("--associations", type=int, default=4, help="parallel associations (default 4)")
    parser.add_argument("--render-timeout", type=float, default=600.0,
                        help="seconds to wait for the renderer to catch up in the memory run (default 600)")
    parser.add_argument("--skip-throughput", action="store_true", help="only the memory run")
    parser.add_argument("--storescp-fork", action="store_true",
                        help="run storescp with --fork (a process per association) instead of one process")
    parser.add_argument("--dcmtk-nodelay", action="store_true",
                        help="turn Nagle's algorithm off in storescu and storescp (TCP_NODELAY=1; not the default)")
    parser.add_argument("--server-env", metavar="KEY=VALUE", action="append", default=[],
                        help="extra environment variable for our server (repeatable), e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--py-spy", metavar="DIR", type=Path,
                        help="record each of our throughput runs with py-spy (raw collapsed stacks) into DIR")
    parser.add_argument("--tmpdir", type=Path, help="where the temporary folder goes (default: the system's)")
    args = parser.parse_args(argv)
    if min(args.large, args.small, args.associations) < 1 or args.rss_images < 0:
        parser.error("counts must be positive")
    for tool in (STORESCU, STORESCP, ECHOSCU):
        if not tool.exists():
            parser.error(f"{tool} not found (dcmtk); set DCMTK_BIN")
    if args.dcmtk_nodelay:
        DCMTK_ENV["TCP_NODELAY"] = "1"
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--server-env expects KEY=VALUE, not {item!r}")
        SERVER_ENV[key] = value
    if args.py_spy:
        if not shutil.which("py-spy"):
            parser.error("py-spy not found: pip install py-spy")
        args.py_spy.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    print_setup(args.storescp_fork)
    with tempfile.TemporaryDirectory(prefix="xrv-ingest-bench-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        serials = Serials()
        t = time.perf_counter()
        sets = {
            "small": make_files(root / "files", "small", 512, 512, args.small, args.associations, 1, serials),
            "large": make_files(root / "files", "large", 2500, 2000, args.large, args.associations, 2, serials),
        }
        print(f"Generated {args.small} small + {args.large} large files "
              f"({sum(fs.total_bytes for fs in sets.values()) / MB:.0f} MB) in {time.perf_counter() - t:.1f} s",
              flush=True)

        results: list[Result] = []
        for size in () if args.skip_throughput else ("small", "large"):
            fs = sets[size]
            for assoc in dict.fromkeys((1, args.associations)):
                for receiver in (StoreSCP(root / "run", args.storescp_fork), OurServer(root / "run")):
                    r = run_once(receiver, fs, assoc, root / "logs" / f"{size}-{assoc}-{receiver.name}", args.py_spy)
                    results.append(r)
                    print(f"  {r.receiver:<8} {size:<5} x{assoc}: {r.images} images in {r.seconds:6.2f} s = "
                          f"{r.images_per_s:7.1f} images/s{'  (problems: see below)' if r.problems else ''}",
                          flush=True)
        shutil.rmtree(sets["small"].root, ignore_errors=True)  # not needed any more
        if results:
            print_throughput(results, sets)

        if args.rss_images:
            print(f"\nMemory run: sending {args.rss_images} large images ...", flush=True)
            print_rss(rss_run(root, sets["large"], args.rss_images, args.associations, serials,
                              args.render_timeout), sets["large"])
    print(f"\nTotal time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
