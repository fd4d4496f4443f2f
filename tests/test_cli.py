"""The `xrayvision` command as an operator meets it, run as a subprocess (the installed console script): --help,
hash-password on a terminal (a real pty) and on a pipe, configuration errors from the environment and from files,
ports from the environment, and the log of one instance received and
analysed, which names the instance and never the patient."""
from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import select
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ADMIN, DCMTK, cnp_with_check, free_port, storescu, synthetic_cr, xrayvision_command
from llm_server import LLMServer

from xrayvision.web.auth import verify_password

COMMAND = xrayvision_command()


def _env(**variables: str) -> dict[str, str]:
    """This process's environment without XRAYVISION_ variables, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}
    return {**env, **variables}


def _run(tmp_path: Path, *args: str, stdin: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], cwd=tmp_path, input=stdin, capture_output=True, text=True, timeout=60,
                          env=env or _env())


def _wait(condition, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- --help ---------------------------------------------------------------------------------------------------------

def test_help_names_the_config_files_the_environment_and_the_ports(tmp_path: Path) -> None:
    result = _run(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for needle in ("defaults.cfg", "./xrayvision.cfg", "--config PATH", "local.cfg", "XRAYVISION_<SECTION>_<KEY>",
                   "4010", "[dicom] AE_PORT", "XRAYVISION_DICOM_AE_PORT", "8000", "[dashboard] DASHBOARD_PORT",
                   "XRAYVISION_DASHBOARD_PORT", "[openai] OPENAI_URL_PRIMARY", "hash-password"):
        assert needle in text, needle
    # The defaults file it names is the one the server reads.
    path = re.search(r"built-in defaults\s+(\S+defaults\.cfg)", text)
    assert path and Path(path.group(1)).is_file()


def test_hash_password_help_says_how_it_reads_the_password(tmp_path: Path) -> None:
    result = _run(tmp_path, "hash-password", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "On a terminal it asks for the password twice (the two must match)" in text
    assert "otherwise it reads one line from standard input" in text


# --- hash-password ----------------------------------------------------------------------------------------------

class Terminal:
    """`xrayvision hash-password` with a pty as its controlling terminal and standard input, as when a person types;
    standard output and error are pipes, so that what it prints is read whole (the prompts go to the terminal)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [*COMMAND, "hash-password", *args], cwd=tmp_path, env=_env(), stdin=slave, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=self._take_terminal,
        )
        os.close(slave)
        self.screen = b""  # what the terminal showed

    @staticmethod
    def _take_terminal() -> None:
        import fcntl
        import termios

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the new session's controlling terminal: Ctrl-C becomes SIGINT

    def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.screen:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal: {self.screen!r}"
            assert self.proc.poll() is None, f"exited before {text!r}: {self.screen!r}"
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
                    self.screen += os.read(self.master, 4096)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Exit code, standard output, standard error."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            os.close(self.master)
        return self.proc.returncode, out.decode(), err.decode()


def test_hash_password_on_a_terminal_asks_twice_and_prints_a_verifying_line(tmp_path: Path) -> None:
    term = Terminal(tmp_path, "--role", "admin")
    term.expect("Password: ")
    term.send(b"Corect-Cal-Baterie\n")
    term.expect("Again: ")
    term.send(b"Corect-Cal-Baterie\n")
    code, out, err = term.finish()
    assert code == 0, err
    assert b"Corect-Cal-Baterie" not in term.screen  # never echoed
    stored, role = out.strip().rsplit(",", 1)
    assert role == "admin" and verify_password(stored, "Corect-Cal-Baterie")
    assert err == ""


def test_hash_password_on_a_terminal_refuses_two_different_entries(tmp_path: Path) -> None:
    term = Terminal(tmp_path)
    term.expect("Password: ")
    term.send(b"first-try-1\n")
    term.expect("Again: ")
    term.send(b"first-try-2\n")
    code, out, err = term.finish()
    assert code == 1, err
    assert err == "xrayvision: the two passwords differ; nothing printed\n" and out == ""


@pytest.mark.parametrize(("key", "code", "message"), [(b"\x03", 130, "interrupted"), (b"\x04", 1, "no password given")],
                         ids=["ctrl-c", "ctrl-d"])
def test_hash_password_on_a_terminal_stops_cleanly(tmp_path: Path, key: bytes, code: int, message: str) -> None:
    for prompt in ("Password: ", "Again: "):  # at either prompt
        term = Terminal(tmp_path)
        term.expect("Password: ")
        if prompt == "Again: ":
            term.send(b"something-long\n")
            term.expect("Again: ")
        term.send(key)
        returncode, out, err = term.finish()
        assert returncode == code, err
        assert out == "" and err.strip() == f"xrayvision: {message}", err  # one line, no traceback


def test_hash_password_on_a_pipe_reads_one_line_and_needs_one(tmp_path: Path) -> None:
    piped = _run(tmp_path, "hash-password", stdin="from-a-pipe\nsecond line ignored\n")
    assert piped.returncode == 0, piped.stderr
    assert verify_password(piped.stdout.strip().rsplit(",", 1)[0], "from-a-pipe")
    assert "Password" not in piped.stdout + piped.stderr  # no prompt on a pipe
    nothing = _run(tmp_path, "hash-password", stdin="")
    assert nothing.returncode == 1
    assert nothing.stderr.strip() == ("xrayvision: no password on standard input (pipe one line in, or run this on "
                                      "a terminal)")


# --- configuration errors ----------------------------------------------------------------------------------------

def test_a_bad_port_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    result = _run(tmp_path, env=_env(XRAYVISION_DICOM_AE_PORT="abc"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "xrayvision: configuration error: [dicom] AE_PORT (from XRAYVISION_DICOM_AE_PORT): 'abc' is not a whole number")


def test_a_misspelt_section_gets_a_did_you_mean(tmp_path: Path) -> None:
    config = tmp_path / "site.cfg"
    config.write_text("[dicon]\nAE_PORT = 11112\n")
    result = _run(tmp_path, "--config", str(config))
    assert result.returncode == 2
    assert "unknown section [dicon] (did you mean [dicom]?)" in result.stderr
    typo = _run(tmp_path, env=_env(XRAYVISION_DICON_AE_PORT="11112"))
    assert typo.returncode == 2
    assert "XRAYVISION_DICON_AE_PORT: no such section" in typo.stderr
    assert "did you mean XRAYVISION_DICOM_AE_PORT?" in typo.stderr


# --- a running server ------------------------------------------------------------------------------------------

def _echo(port: int) -> bool:
    return subprocess.run([str(DCMTK / "echoscu"), "-aec", "XRAYVISION", "127.0.0.1", str(port)],
                          capture_output=True).returncode == 0


def _http_status(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/exams", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_ports_and_the_model_endpoint_come_from_the_environment(tmp_path: Path) -> None:
    dicom, dashboard, nowhere = free_port(), free_port(), free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(COMMAND, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=_env(
            XRAYVISION_DICOM_AE_PORT=str(dicom), XRAYVISION_DASHBOARD_PORT=str(dashboard),
            XRAYVISION_OPENAI_URL_PRIMARY=f"http://127.0.0.1:{nowhere}/v1"))
    try:
        _wait(lambda: server.poll() is not None or _echo(dicom), "the DICOM port")
        _wait(lambda: server.poll() is not None or _http_status(dashboard) == 401, "the dashboard port")
        assert server.poll() is None, log.read_text()
        # An endpoint nobody answers at is said at start, with its URL and why.
        _wait(lambda: "is down" in log.read_text(), "the endpoint's state in the log")
    finally:
        _stop(server)
    text = log.read_text()
    url = f"http://127.0.0.1:{nowhere}/v1/chat/completions"
    assert re.search(rf"INFO \| xrayvision\.analysis\.endpoints \| Model endpoint primary \(\[openai\] "
                     rf"OPENAI_URL_PRIMARY\): {re.escape(url)}", text), text
    assert re.search(rf"WARNING \| xrayvision\.analysis\.endpoints \| Model endpoint primary \({re.escape(url)}\) "
                     r"is down: cannot connect: connection refused", text), text


@pytest.fixture
async def llm():  # type: ignore[no-untyped-def]
    async with LLMServer() as server:
        yield server


def _status(db: Path, uid: str) -> str | None:
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT status FROM exams WHERE uid = ?", (uid,)).fetchone()
    except sqlite3.OperationalError:
        return None  # not migrated yet
    finally:
        conn.close()
    return row[0] if row else None


async def _until(condition, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_the_log_has_one_line_per_received_instance_and_per_analysis_without_patient_data(
        tmp_path: Path, llm: LLMServer) -> None:
    dicom = free_port()
    db = tmp_path / "xrayvision.db"
    config = tmp_path / "site.cfg"
    config.write_text(
        f"[general]\nXRAYVISION_DB_PATH = {db}\nIMAGES_DIR = {tmp_path / 'images'}\n"
        f"[users]\n{ADMIN[0]} = {ADMIN[1]},admin\n"
        f"[dicom]\nAE_PORT = {dicom}\n[dashboard]\nDASHBOARD_PORT = {free_port()}\n"
        f"[openai]\nOPENAI_URL_PRIMARY = {llm.base_url}\nMODEL_NAME = medgemma-test\n")
    cnp = cnp_with_check("284070512345")
    image = synthetic_cr(tmp_path / "cr.dcm", 128, 128, PatientName="Vasilescu^Ecaterina", PatientID=cnp,
                         PatientBirthDate="19840705", ProtocolName="Torace PA")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = await asyncio.create_subprocess_exec(*COMMAND, "--config", str(config), cwd=tmp_path, stdout=out,
                                                      stderr=subprocess.STDOUT, env=_env())
    try:
        await _until(lambda: server.returncode is not None or "listening on" in log.read_text(), "the receiver")
        sent = await storescu(dicom, image)
        assert sent.statuses == {"cr.dcm": "Success"}, sent.output
        import pydicom

        uid = str(pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)
        await _until(lambda: _status(db, uid) == "done", "the analysis")
        await _until(lambda: f"Analysis of {uid}: done" in log.read_text(), "the analysis line")
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            await asyncio.wait_for(server.wait(), timeout=30)
    text = log.read_text()
    received = [line for line in text.splitlines() if f"Received {uid}" in line]
    assert len(received) == 1, text
    assert re.search(rf"INFO \| xrayvision\.dicom\.receiver \| Received {uid} \(Computed Radiography Image Storage\) "
                     r"from STORESCU@127\.0\.0\.1$", received[0]), received
    analysed = [line for line in text.splitlines() if f"Analysis of {uid}:" in line]
    assert len(analysed) == 1, text
    assert re.search(rf"INFO \| xrayvision\.analysis\.worker \| Analysis of {uid}: done on primary in \d+\.\d s "
                     r"\(negative, severity 0, confidence 90\)$", analysed[0]), analysed
    assert "Model endpoint primary" in text and "is up" in text
    # No patient data anywhere in the log, and no per-request chatter of the model client.
    for secret in ("Vasilescu", "Ecaterina", cnp, "19840705", "1984-07-05"):
        assert secret not in text, secret
    assert "HTTP Request:" not in text and "/v1/chat/completions \"HTTP" not in text
