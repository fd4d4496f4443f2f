"""The real FHIR R4 server of the tests: sekmet-fhir, from its own virtualenv (tests/run makes it, outside ours, and
exports SEKMET_VENV), started on a loopback port in a temporary folder and loaded over its REST API."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

VENV = Path(os.environ.get("SEKMET_VENV", Path.home() / ".cache" / "xrayvision" / "sekmet-venv"))
USER = ("xrv-fhir", "sekmet-test-pw-4d1e")
TOKEN = "sekmet-test-token-0b7c93"


def sekmet_command() -> Path:
    command = VENV / "bin" / "sekmet"
    if not command.exists():
        pytest.fail(f"sekmet-fhir is not installed at {VENV}: run the tests with `bash tests/run` "
                    "(or set SEKMET_VENV to a virtualenv with `pip install sekmet-fhir`)")
    return command


@dataclass
class Sekmet:
    base_url: str  # http://127.0.0.1:N/fhir, where /metadata lives
    process: subprocess.Popen[bytes]
    log_path: Path
    loaded: list[str] = field(default_factory=list)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        token = base64.b64encode(f"{USER[0]}:{USER[1]}".encode()).decode()
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base_url}/{path}", data=data, method=method, headers={
            "Authorization": f"Basic {token}", "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"sekmet refused {method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def put(self, *resources: dict[str, Any]) -> None:
        """Create or replace each resource under its own id."""
        for resource in resources:
            self.request("PUT", f"{resource['resourceType']}/{resource['id']}", resource)
            self.loaded.append(f"{resource['resourceType']}/{resource['id']}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


def start_sekmet(folder: Path) -> Sekmet:
    """sekmet on a free loopback port, requiring Basic (USER) or Bearer (TOKEN) auth, with its order simulator off
    (it would answer our ServiceRequests with reports of its own)."""
    command = sekmet_command()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/fhir"
    config = {  # JSON is YAML; base_url goes into the Bundles' links, so it must be this very address
        "base_url": base_url, "host": "127.0.0.1", "port": port, "data_dir": str(folder / "data"),
        "own_private_key_path": str(folder / "keys" / "sekmet_private.pem"), "log_inbound": False,
        "simulator": {"enabled": False},
        "server_auth": {"types": ["basic", "bearer"], "users": {USER[0]: USER[1]}, "tokens": [TOKEN]},
    }
    settings = folder / "settings.yaml"
    settings.write_text(json.dumps(config))
    log_path = folder / "sekmet.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(command), "serve", "--config", str(settings), "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    server = Sekmet(base_url, process, log_path)
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            pytest.fail(f"sekmet exited with {process.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/metadata", timeout=5) as resp:
                if json.loads(resp.read()).get("resourceType") == "CapabilityStatement":
                    return server
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"sekmet did not answer /metadata: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)  # polling a starting process, with the deadline above
