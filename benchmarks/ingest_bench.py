"""DICOM ingest throughput and memory of the XRayVision server, against dcmtk's storescp as a baseline.

Run: python benchmarks/ingest_bench.py [--large 200] [--small 500] [--rss-images 1000]

1. Generates synthetic CR files (2000x2500 and 512x512, 16 bits allocated / 12 stored, MONOCHROME2, Explicit
   VR Little Endian, every file with its own SOP/Study/Series UIDs and PatientID) in a temporary folder.
2. For each size, sends them with dcmtk's storescu over one association, then over 4 parallel associations
   (4 storescu processes, each with a quarter of the files, started together), to dcmtk's storescp and to
   the real server (`python -m xrayvision --config ...`, a fresh one with its own database per run). The time
   runs from the first storescu start to the last storescu exit.
3. Prints images/s, MB/s and the ratio ours/storescp, and whether the throughput targets are met.
4. Sends --rss-images large images (distinct UIDs) to a fresh server, waits until its renderer has caught up,
   and prints its RSS (with children) and the peak RSS sampled every 0.5 s, against the RSS target.

It asserts nothing: it prints figures. Everything it starts it stops; the temporary folder is removed.
"""
from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - a hint rather than a traceback
    sys.exit("ingest_bench needs psutil: pip install psutil")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dicom import SyntheticCR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DCMTK = Path(os.environ.get("DCMTK_BIN", "/usr/bin"))  # not pynetdicom's console scripts of the same names
STORESCU = DCMTK / "storescu"
STORESCP = DCMTK / "storescp"
ECHOSCU = DCMTK / "echoscu"

OUR_AET = "XRAYVISION"
SCP_AET = "STORESCP"
SCU_AET = "BENCHSCU"
# storescp: bit-preserving (+B) receives each data set straight into its file as the PDVs arrive (no re-encoding),
# at dcmtk's largest PDU; -dhl skips reverse DNS. It does not fsync. Single process: associations are served
# one after another unless --storescp-fork.
STORESCP_OPTIONS = ["+B", "-pdu", "131072", "-dhl"]
# storescu: only the contexts the files need, a generous ACSE timeout (a single-process storescp makes the
# other associations wait), and the files found by scanning folders (no argv limit).
STORESCU_OPTIONS = ["-R", "-ta", "300", "-aet", SCU_AET]

TARGET_RATIO = {"small": 3.0, "large": 1.5}
TARGET_RSS_MB = 200
MB = 1e6  # throughput in 10^6 bytes of .dcm files per second
MIB = 1024 * 1024  # RSS in MiB


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def rss_of(proc: psutil.Process) -> int:
    """Resident set of a process and all its descendants, in bytes (0 once it is gone)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class RssSampler:
    """Samples a process tree's RSS every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            rss = rss_of(self.proc)
            self.peak = max(self.peak, rss)
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------- receivers


class Receiver:
    """A DICOM receiver process the benchmark started (and must stop)."""

    name = ""
    aet = ""
    options = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "receiver.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        pass

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.prepare()
        env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env,
            )
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
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # storescp --fork children belong to it; any left over are ended by their own pid.
        self.proc = None

    def check(self, sent: int) -> str:
        """An empty string when everything sent was kept, else a warning."""
        return ""


class StoreSCP(Receiver):
    name = "storescp"
    aet = SCP_AET

    def __init__(self, workdir: Path, fork: bool) -> None:
        super().__init__(workdir)
        self.fork = fork
        self.out = workdir / "received"
        self.options = " ".join(STORESCP_OPTIONS + (["--fork"] if fork else []))

    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        extra = ["--fork"] if self.fork else []
        return [str(STORESCP), *STORESCP_OPTIONS, *extra, "-aet", self.aet, "-od", str(self.out), str(self.port)]

    def stop(self) -> None:
        children = []
        if self.proc is not None and self.fork:
            try:
                children = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                pass
        super().stop()
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass

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
        self.options = "MAX_PDU 0, fresh database and images folder per run"

    def prepare(self) -> None:
        web_port = free_ports(1)[0]
        while web_port == self.port:
            web_port = free_ports(1)[0]
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


# --------------------------------------------------------------------------------------------- sending


def storescu(port: int, aet: str, targets: Sequence[Path], log: Path) -> subprocess.Popen[bytes]:
    """One storescu, one association, carrying every file in `targets` (folders are scanned recursively)."""
    scan = ["+sd", "+r"] if any(t.is_dir() for t in targets) else []
    cmd = [str(STORESCU), *STORESCU_OPTIONS, *scan, "-aec", aet, "127.0.0.1", str(port), *map(str, targets)]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def send(port: int, aet: str, batches: Sequence[Sequence[Path]], logdir: Path) -> tuple[float, list[str]]:
    """Start one storescu per batch together; returns (seconds to the last exit, problems)."""
    logdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    procs = [storescu(port, aet, batch, logdir / f"storescu{i}.log") for i, batch in enumerate(batches)]
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - start
    problems = [
        f"storescu #{i} exited with {code}: {tail(logdir / f'storescu{i}.log', 5)}"
        for i, code in enumerate(codes) if code != 0
    ]
    return seconds, problems


def settle() -> None:
    """Between runs: write back what the previous receiver left in the page cache, so it does not slow the next."""
    os.sync()
    time.sleep(0.5)


# --------------------------------------------------------------------------------------------- file sets


@dataclass
class FileSet:
    label: str  # "small" or "large"
    geometry: str
    generator: SyntheticCR
    parts: list[Path]  # one folder per parallel association
    files: list[Path] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return len(self.files) * self.generator.file_size


class Serials:
    def __init__(self) -> None:
        self.next = 1

    def take(self) -> int:
        value, self.next = self.next, self.next + 1
        return value


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


# --------------------------------------------------------------------------------------------- runs


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


def run_once(receiver: Receiver, fs: FileSet, associations: int, logdir: Path,
             profile_dir: Path | None) -> Result:
    settle()
    receiver.start()
    spy = None
    try:
        batches = [[fs.parts[0].parent]] if associations == 1 else [[part] for part in fs.parts]
        if profile_dir is not None and isinstance(receiver, OurServer):
            out = profile_dir / f"ours-{fs.label}-{associations}assoc.txt"
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(receiver.proc.pid), "--format", "raw", "--threads",
                 "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # let py-spy attach
        sampler = RssSampler(receiver.proc.pid) if isinstance(receiver, OurServer) else None
        if sampler:
            sampler.__enter__()
        try:
            seconds, problems = send(receiver.port, receiver.aet, batches, logdir)
        finally:
            if sampler:
                sampler.__exit__()
        warning = receiver.check(len(fs.files))
        if warning:
            problems.append(warning)
        return Result(receiver.name, fs.label, associations, len(fs.files), fs.total_bytes, seconds, problems,
                      sampler.peak if sampler else None)
    finally:
        if spy is not None:
            spy.terminate()  # py-spy writes its profile on SIGTERM/SIGINT
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        receiver.stop()
        shutil.rmtree(receiver.workdir, ignore_errors=True)


def rss_run(root: Path, fs: FileSet, total: int, associations: int, serials: Serials,
            render_timeout: float) -> dict[str, object]:
    """Send `total` large images (distinct UIDs) to one fresh server, wait for its renderer, read its RSS."""
    settle()
    server = OurServer(root / "rss-ours")
    server.start()
    report: dict[str, object] = {"problems": []}
    problems: list[str] = report["problems"]  # type: ignore[assignment]
    try:
        proc = psutil.Process(server.proc.pid)
        time.sleep(1.0)
        report["idle_rss"] = rss_of(proc)
        sent = 0
        with RssSampler(server.proc.pid) as sampler:
            start = time.perf_counter()
            round_no = 0
            while sent < total:
                k = min(len(fs.files), total - sent)
                chosen = fs.files[:k]
                if round_no > 0:  # the first round sends the files as generated; later ones get new identities
                    for path in chosen:
                        fs.generator.restamp(path, serials.take())
                if k == len(fs.files):
                    batches = [[part] for part in fs.parts]
                else:
                    batches = [chosen[i::associations] for i in range(associations)]
                    batches = [b for b in batches if b]
                _, errors = send(server.port, server.aet, batches, root / "rss-logs" / f"round{round_no}")
                problems.extend(errors)
                sent += k
                round_no += 1
            report["ingest_s"] = time.perf_counter() - start
            report["rss_after_ingest"] = rss_of(proc)
            deadline = time.monotonic() + render_timeout
            left = server.unrendered()
            while left and time.monotonic() < deadline:
                time.sleep(1.0)
                left = server.unrendered()
            report["catch_up_s"] = time.perf_counter() - start
            report["unrendered"] = left
            if left:
                problems.append(f"renderer still had {left} exams to render after {render_timeout:.0f} s")
            time.sleep(1.0)  # let the last job's buffers go
        report["final_rss"] = rss_of(proc)
        report["peak_rss"] = sampler.peak
        report["samples"] = sampler.samples
        report["sent"] = sent
        rows = server.exam_rows()
        report["rows"] = rows
        if rows != sent:
            problems.append(f"ours has {rows} exam rows, {sent} images were sent")
        report["errors"] = server.query("SELECT COUNT(*) FROM exams WHERE status = 'error'")
        report["rounds"] = round_no
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
    return report


# --------------------------------------------------------------------------------------------- report


def print_throughput(results: list[Result], sets: dict[str, FileSet], storescp_options: str) -> None:
    print()
    print("Ingest throughput: dcmtk storescu -> receiver on 127.0.0.1, time from the first storescu start to the "
          "last exit")
    print(f"  storescp: {STORESCP} {storescp_options} (writes each file as it arrives; no fsync)")
    print(f"  ours:     python -m xrayvision, MAX_PDU 0 (fsyncs each file and its folder, commits a row with "
          f"synchronous=FULL before answering; renders PNGs in the background during the run)")
    print(f"  storescu: {STORESCU} {' '.join(STORESCU_OPTIONS)} +sd +r; 4 associations = 4 storescu processes")
    print(f"  MB = 10^6 bytes of .dcm files; peak RSS = our server, sampled every 0.5 s")
    print()
    header = (f"{'size':<22} {'assoc':>5}  {'receiver':<9} {'images':>6} {'MB':>8} {'seconds':>8} "
              f"{'images/s':>9} {'MB/s':>8} {'ours/storescp':>13} {'peak RSS':>9}")
    print(header)
    print("-" * len(header))
    by_key = {(r.receiver, r.size, r.associations): r for r in results}
    for r in results:
        fs = sets[r.size]
        ratio = ""
        if r.receiver == "ours" and ("storescp", r.size, r.associations) in by_key:
            base = by_key[("storescp", r.size, r.associations)]
            ratio = f"{r.images_per_s / base.images_per_s:.2f}"
        rss = f"{r.peak_rss / MIB:.0f} MiB" if r.peak_rss else ""
        print(f"{r.size + ' (' + fs.geometry + ')':<22} {r.associations:>5}  {r.receiver:<9} {r.images:>6} "
              f"{r.nbytes / MB:>8.1f} {r.seconds:>8.2f} {r.images_per_s:>9.1f} {r.mb_per_s:>8.1f} "
              f"{ratio:>13} {rss:>9}")
    for r in results:
        for problem in r.problems:
            print(f"WARNING: {r.receiver} {r.size} x{r.associations}: {problem}")
    print()
    print("Throughput targets (ours/storescp, images/s):")
    for size in ("small", "large"):
        for assoc in sorted({r.associations for r in results}):
            ours, base = by_key.get(("ours", size, assoc)), by_key.get(("storescp", size, assoc))
            if not ours or not base:
                continue
            ratio = ours.images_per_s / base.images_per_s
            verdict = "met" if ratio >= TARGET_RATIO[size] else "NOT met"
            print(f"  {size:<5} files, {assoc} association{'s' if assoc > 1 else ' '}: ratio {ratio:5.2f} "
                  f"(target >= {TARGET_RATIO[size]:.1f})  {verdict}")


def print_rss(report: dict[str, object], fs: FileSet) -> None:
    print()
    print(f"Memory: {report['sent']} large images ({fs.geometry}, distinct UIDs) sent to one fresh server in "
          f"{report['rounds']} round(s) of 4 parallel associations")
    ingest_s = float(report["ingest_s"])  # type: ignore[arg-type]
    catch_s = float(report["catch_up_s"])  # type: ignore[arg-type]
    sent = int(report["sent"])  # type: ignore[arg-type]
    print(f"  ingest: {ingest_s:.1f} s ({sent / ingest_s:.1f} images/s); renderer caught up "
          f"{catch_s:.1f} s after the first image ({report['unrendered']} left unrendered); "
          f"exam rows {report['rows']}, status 'error' {report['errors']}")
    idle = int(report["idle_rss"]) / MIB  # type: ignore[arg-type]
    after_ingest = int(report["rss_after_ingest"]) / MIB  # type: ignore[arg-type]
    final = int(report["final_rss"]) / MIB  # type: ignore[arg-type]
    peak = int(report["peak_rss"]) / MIB  # type: ignore[arg-type]
    print(f"  RSS idle before sending:        {idle:7.1f} MiB")
    print(f"  RSS when the last storescu exited: {after_ingest:4.1f} MiB")
    print(f"  peak RSS sampled every 0.5 s:   {peak:7.1f} MiB ({report['samples']} samples)")
    verdict = "met" if final <= TARGET_RSS_MB else "NOT met"
    print(f"  RSS after the renderer caught up: {final:5.1f} MiB   target <= {TARGET_RSS_MB} MB  {verdict}")
    for problem in report["problems"]:  # type: ignore[attr-defined]
        print(f"WARNING: rss run: {problem}")


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=int, default=200, help="2000x2500 files per throughput run (default 200)")
    parser.add_argument("--small", type=int, default=500, help="512x512 files per throughput run (default 500)")
    parser.add_argument("--rss-images", type=int, default=1000,
                        help="large images sent for the memory measurement (default 1000; 0 skips it)")
    parser.add_argument("--associations", type=int, default=4, help="parallel associations (default 4)")
    parser.add_argument("--render-timeout", type=float, default=600.0,
                        help="seconds to wait for the renderer to catch up in the memory run (default 600)")
    parser.add_argument("--storescp-fork", action="store_true",
                        help="run storescp with --fork (one process per association) instead of a single process")
    parser.add_argument("--py-spy", metavar="DIR", type=Path,
                        help="record each of our throughput runs with py-spy (raw collapsed stacks) into DIR; "
                             "slows the server a little")
    parser.add_argument("--tmpdir", type=Path, help="where the temporary folder goes (default: the system's)")
    args = parser.parse_args(argv)
    if args.large < 1 or args.small < 1 or args.associations < 1 or args.rss_images < 0:
        parser.error("counts must be positive")
    for tool in (STORESCU, STORESCP, ECHOSCU):
        if not tool.exists():
            parser.error(f"{tool} not found (dcmtk); set DCMTK_BIN")
    if args.py_spy:
        if not shutil.which("py-spy"):
            parser.error("py-spy not found: pip install py-spy")
        args.py_spy.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xrv-ingest-bench-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        serials = Serials()
        t = time.perf_counter()
        sets = {
            "small": make_files(root / "files", "small", 512, 512, args.small, args.associations, 1, serials),
            "large": make_files(root / "files", "large", 2500, 2000, args.large, args.associations, 2, serials),
        }
        gen_s = time.perf_counter() - t
        total_mb = sum(fs.total_bytes for fs in sets.values()) / MB
        print(f"Generated {args.small} + {args.large} files ({total_mb:.0f} MB) in {gen_s:.1f} s under {root}",
              flush=True)

        storescp_options = " ".join(STORESCP_OPTIONS + (["--fork"] if args.storescp_fork else []))
        results: list[Result] = []
        for size in ("small", "large"):
            fs = sets[size]
            for assoc in (1, args.associations):
                for make in (lambda d: StoreSCP(d, args.storescp_fork), OurServer):
                    receiver = make(root / "run")
                    result = run_once(receiver, fs, assoc, root / "logs" / f"{size}-{assoc}-{receiver.name}",
                                      args.py_spy)
                    results.append(result)
                    print(f"  {receiver.name:<8} {size:<5} x{assoc}: {result.images} images in "
                          f"{result.seconds:6.2f} s = {result.images_per_s:7.1f} images/s, "
                          f"{result.mb_per_s:6.1f} MB/s{'  (problems, see below)' if result.problems else ''}",
                          flush=True)
        # The small files are not needed any more.
        shutil.rmtree(root / "files" / "small", ignore_errors=True)
        print_throughput(results, sets, storescp_options)

        if args.rss_images:
            print(f"\nMemory run: sending {args.rss_images} large images ...", flush=True)
            report = rss_run(root, sets["large"], args.rss_images, args.associations, serials, args.render_timeout)
            print_rss(report, sets["large"])
    print(f"\nTotal time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
