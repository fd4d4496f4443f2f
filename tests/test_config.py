"""Settings: built-in defaults, config file, local.cfg and environment, in that order; every bad value refused by name;
and the command line's refusals and hash-password."""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from conftest import free_port, xrayvision_command

from xrayvision import app, cli
from xrayvision.config import ConfigError, load_settings
from xrayvision.web.auth import verify_password


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _load(tmp_path: Path, text: str | None = None, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    config = _write(tmp_path / "test.cfg", text) if text is not None else None
    return load_settings(config, environ=environ or {}, base_dir=tmp_path)


def _clean_env() -> dict[str, str]:
    """This process's environment without any XRAYVISION_ variable that could change what a child loads."""
    return {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}


# --- defaults -----------------------------------------------------------------------------------------------------

def test_defaults_alone_load_and_validate(tmp_path: Path) -> None:
    settings = load_settings(None, environ={}, base_dir=tmp_path)  # no xrayvision.cfg in tmp_path
    assert settings.source == ()
    assert settings.warnings == ()
    assert settings.general.db_path == tmp_path / "xrayvision.db"
    assert settings.general.images_dir == tmp_path / "images"
    assert settings.general.log_level == "INFO"
    assert settings.dicom.ae_title == "XRAYVISION"
    assert settings.dicom.port == 4010
    assert settings.dicom.bind_address == "127.0.0.1"
    assert settings.dicom.retrieval_method == "C-MOVE"
    assert settings.dashboard.port == 8000
    assert settings.dashboard.bind_address == "127.0.0.1"
    assert settings.processing.page_size == 10
    assert settings.processing.keep_dicom is False
    assert settings.processing.no_query is True
    fhir = settings.fhir  # no FHIR server: nothing is fetched
    assert (fhir.url, fhir.flavour, fhir.identifier_system, fhir.token) == ("", "r4", "", "")
    assert (fhir.fetch_interval, fhir.fetch_batch, fhir.lookback_days, fhir.max_attempts) == (300, 20, 30, 10)
    assert (fhir.match_hours, fhir.timeout, settings.openai.report_max_chars) == (48, 30, 20000)
    assert settings.processing.enable_his is False
    assert dict(settings.users) == {}
    # Region rules, questions and the supported regions all come with the defaults.
    regions = settings.regions.regions()
    assert regions[0] == "chest"
    assert {"chest", "abdomen", "skull", "knee", "foot", "nasal_bones", "paranasal_sinuses"} <= set(regions)
    assert settings.regions.match("Torace AP") == "chest"
    assert settings.regions.match("Genunchi drept") == "knee"
    assert set(settings.questions) == set(regions)
    assert all(settings.questions.values())
    assert settings.supported_regions == {"chest", "abdomen", "nasal_bones", "paranasal_sinuses", "clavicle"}
    assert settings.supported_regions <= set(regions)


def test_xrayvision_cfg_in_the_working_directory_is_read_when_no_config_is_given(tmp_path: Path) -> None:
    _write(tmp_path / "xrayvision.cfg", "[dicom]\nAE_PORT = 4321\n")
    settings = load_settings(None, environ={}, base_dir=tmp_path)
    assert settings.dicom.port == 4321
    assert settings.source == (str(tmp_path / "xrayvision.cfg"),)


# --- precedence ---------------------------------------------------------------------------------------------------

def test_file_then_local_cfg_then_environment(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "server.cfg",
        "[dicom]\nAE_PORT = 5001\nAE_TITLE = FROMFILE\n"
        "[openai]\nOPENAI_API_KEY = file-key\nMODEL_NAME = file-model\n"
        "[processing]\nPAGE_SIZE = 20\n",
    )
    only_file = load_settings(config, environ={}, base_dir=tmp_path)
    assert only_file.dicom.port == 5001
    assert only_file.dicom.ae_title == "FROMFILE"
    assert only_file.openai.api_key == "file-key"
    assert only_file.processing.page_size == 20
    assert only_file.source == (str(config),)

    local = _write(tmp_path / "local.cfg", "[dicom]\nAE_PORT = 5002\n[processing]\nPAGE_SIZE = 30\n")
    with_local = load_settings(config, environ={}, base_dir=tmp_path)
    assert with_local.dicom.port == 5002
    assert with_local.processing.page_size == 30
    assert with_local.dicom.ae_title == "FROMFILE"  # what local.cfg does not set stays from the file
    assert with_local.source == (str(config), str(local))

    environ = {
        "XRAYVISION_DICOM_AE_PORT": "5003",
        "XRAYVISION_OPENAI_OPENAI_API_KEY": "sk-from-env",
        "XRAYVISION_SUPPORTED_REGIONS_KNEE": "true",
        "PATH": "/usr/bin",  # not ours: ignored
    }
    with_env = load_settings(config, environ=environ, base_dir=tmp_path)
    assert with_env.dicom.port == 5003
    assert with_env.openai.api_key == "sk-from-env"
    assert with_env.openai.model_name == "file-model"
    assert with_env.processing.page_size == 30
    assert "knee" in with_env.supported_regions
    assert "chest" in with_env.supported_regions  # added to the defaults, not replacing them
    assert with_env.warnings == ()  # knee has a rule


def test_environment_variable_for_an_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="XRAYVISION_DICOMM_AE_PORT"):
        load_settings(None, environ={"XRAYVISION_DICOMM_AE_PORT": "1"}, base_dir=tmp_path)


def test_environment_variable_with_a_bad_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AE_PORT"):
        load_settings(None, environ={"XRAYVISION_DICOM_AE_PORT": "abc"}, base_dir=tmp_path)


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"XRAYVISION_DICOM_AE_PORT": "abc"}, base_dir=tmp_path)
    assert "[dicom] AE_PORT (from XRAYVISION_DICOM_AE_PORT): 'abc' is not a whole number" in str(info.value)


def test_a_bad_value_from_a_file_names_the_file(tmp_path: Path) -> None:
    config = _write(tmp_path / "server.cfg", "[dicom]\nAE_PORT = 5001\n")
    local = _write(tmp_path / "local.cfg", "[dicom]\nAE_PORT = -1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={}, base_dir=tmp_path)
    assert f"[dicom] AE_PORT (from {local}): -1 is outside 1..65535" in str(info.value)


def test_a_misspelt_section_or_key_in_a_variable_gets_a_did_you_mean(tmp_path: Path) -> None:
    cases = {
        "XRAYVISION_DICON_AE_PORT": "did you mean XRAYVISION_DICOM_AE_PORT?",
        "XRAYVISION_SUPORTED_REGIONS_KNEE": "did you mean XRAYVISION_SUPPORTED_REGIONS_KNEE?",
        "XRAYVISION_DICOM_AE_PROT": "did you mean XRAYVISION_DICOM_AE_PORT?",
        "XRAYVISION_DASHBOARD_PROT": "did you mean XRAYVISION_DASHBOARD_PORT?",
    }
    for name, hint in cases.items():
        with pytest.raises(ConfigError) as info:
            load_settings(None, environ={name: "1"}, base_dir=tmp_path)
        assert str(info.value).startswith(f"{name}: ") and hint in str(info.value), str(info.value)


def test_a_variable_need_not_repeat_its_section(tmp_path: Path) -> None:
    settings = load_settings(None, base_dir=tmp_path, environ={
        "XRAYVISION_DASHBOARD_PORT": "8123", "XRAYVISION_OPENAI_API_KEY": "k-1",
        "XRAYVISION_OPENAI_URL_GPU2": "http://127.0.0.1:9/v1"})
    assert settings.dashboard.port == 8123
    assert [(e.name, e.api_key, e.key) for e in settings.openai.endpoints] == [
        ("pri", "k-1", "OPENAI_URL_PRIMARY"), ("gpu2", "k-1", "OPENAI_URL_GPU2")]
    full = load_settings(None, base_dir=tmp_path, environ={"XRAYVISION_DASHBOARD_DASHBOARD_PORT": "8124"})
    assert full.dashboard.port == 8124


# --- bad values ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[dicom]\nAE_PORT = abc\n", ["[dicom] AE_PORT", "abc"]),
        ("[dicom]\nAE_PORT = 70000\n", ["[dicom] AE_PORT", "70000"]),
        ("[dicom]\nAE_TITLE = ABCDEFGHIJKLMNOPQ\n", ["[dicom] AE_TITLE", "16"]),
        ("[users]\nbob = pw,superuser\n", ["[users] BOB", "superuser"]),
        ("[users]\nbob = justapassword\n", ["[users] BOB", "password,role"]),
        ("[dicom]\nRETRIEVAL_METHOD = C-FOO\n", ["[dicom] RETRIEVAL_METHOD", "C-FOO"]),
        ("[dicom]\nBIND_ADDRESS = not-an-ip\n", ["[dicom] BIND_ADDRESS", "not-an-ip"]),
        ("[dashboard]\nBIND_ADDRESS = 300.1.1.1\n", ["[dashboard] BIND_ADDRESS"]),
        ("[processing]\nPAGE_SIZE = 0\n", ["[processing] PAGE_SIZE"]),
        ("[processing]\nKEEP_DICOM = maybe\n", ["[processing] KEEP_DICOM", "maybe"]),
        ("[general]\nTIMEZONE = Mars/Olympus\n", ["[general] TIMEZONE", "Mars/Olympus"]),
        ("[openai]\nOPENAI_URL_PRIMARY = ftp://example.org\n", ["[openai] OPENAI_URL_PRIMARY"]),
        ("[dicom]\nae_portt = 4010\n", ["ae_portt", "did you mean ae_port?"]),
        ("[dicomm]\nAE_PORT = 4010\n", ["unknown section [dicomm]", "[dicom]"]),
        ("[dicon]\nAE_PORT = 4010\n", ["unknown section [dicon]", "did you mean [dicom]?"]),
        ("[nonsense]\nx = 1\n", ["unknown section [nonsense]"]),
        ("[fhir]\nFHIR_FLAVOUR = hl7v2\n", ["[fhir] FHIR_FLAVOUR", "hl7v2", "r4, his"]),
        ("[fhir]\nFHIR_URL = his:8080/fhir\n", ["[fhir] FHIR_URL", "http(s) URL"]),
        ("[fhir]\nMAX_ATTEMPTS = 0\n", ["[fhir] MAX_ATTEMPTS", "outside 1..100"]),
        ("[fhir]\nFETCH_INTERVAL = soon\n", ["[fhir] FETCH_INTERVAL", "soon"]),
        ("[openai]\nREPORT_MAX_CHARS = 10\n", ["[openai] REPORT_MAX_CHARS", "outside"]),
        ("[processing]\nAGE_GROUPS = 2, 18\n", ["[processing] AGE_GROUPS", "start at 0"]),
        ("[processing]\nAGE_GROUPS = 0, 18, 6\n", ["[processing] AGE_GROUPS", "rise"]),
        ("[processing]\nAGE_GROUPS = 0, six\n", ["[processing] AGE_GROUPS", "whole numbers"]),
    ],
    ids=["port-text", "port-range", "ae-title-long", "unknown-role", "no-role", "retrieval", "bind-dicom",
         "bind-dashboard", "page-size", "bool", "timezone", "url", "key-typo", "section-typo", "section-typo-n",
         "section-unknown", "fhir-flavour", "fhir-url", "fhir-attempts", "fhir-interval", "report-chars",
         "age-start", "age-order", "age-words"],
)
def test_bad_value_stops_loading_naming_the_key(tmp_path: Path, text: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    for name in names:
        assert name in str(info.value)


def test_the_same_bad_value_in_local_cfg_is_refused_too(tmp_path: Path) -> None:
    config = _write(tmp_path / "server.cfg", "[dicom]\nAE_PORT = 5001\n")
    _write(tmp_path / "local.cfg", "[dicom]\nAE_PORT = -1\n")
    with pytest.raises(ConfigError, match=r"\[dicom\] AE_PORT"):
        load_settings(config, environ={}, base_dir=tmp_path)


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "xrayvision.cfg"
    with pytest.raises(ConfigError) as info:
        load_settings(missing, environ={}, base_dir=tmp_path)
    assert "--config" in str(info.value)
    assert str(missing) in str(info.value)


def test_unparseable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="test.cfg"):
        _load(tmp_path, "AE_PORT = 4010\n")  # a key before any section


def test_several_bad_values_are_all_named_in_one_message(tmp_path: Path) -> None:
    text = (
        "[dicom]\nAE_PORT = abc\nRETRIEVAL_METHOD = C-FOO\n"
        "[users]\nbob = pw,superuser\n"
        "[processing]\nPAGE_SIZE = 0\nSEVERITY_THRESHOLD = 11\n"
    )
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    for name in ("AE_PORT", "RETRIEVAL_METHOD", "[users] BOB", "PAGE_SIZE", "SEVERITY_THRESHOLD"):
        assert name in message


def test_several_unknown_keys_are_all_named_in_one_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "[dicom]\nae_portt = 1\n[processing]\npage_sise = 2\n[dashbord]\nx = 1\n")
    message = str(info.value)
    for name in ("ae_portt", "page_sise", "[dashbord]"):
        assert name in message


# --- a reference-style file ---------------------------------------------------------------------------------------

REFERENCE = """\
[general]
XRAYVISION_DB_PATH = xrayvision.db
XRAYVISION_BACKUP_DIR = backup

[users]
admin = admin,admin
ana = %(not interpolated)s,user

[dicom]
AE_TITLE = XRAYVISION
AE_PORT = 4010
REMOTE_AE_TITLE = DICOM_SERVER
REMOTE_AE_IP = 192.168.3.50
REMOTE_AE_PORT = 104

[openai]
OPENAI_URL_PRIMARY = http://127.0.0.1:8080/v1/chat/completions
OPENAI_URL_SECONDARY = http://127.0.0.1:11434/v1/chat/completions/
OPENAI_API_KEY = sk-no-key-required
MODEL_NAME = medgemma-4b-it

[dashboard]
DASHBOARD_PORT = 8000

[notifications]
NTFY_URL = https://ntfy.sh/xrayvision-alerts

[fhir]
FHIR_URL = http://192.168.3.239:8080/fhir
FHIR_USERNAME = xray
FHIR_PASSWORD = fhir-pass

[processing]
PAGE_SIZE = 10
KEEP_DICOM = False
LOAD_DICOM = False
NO_QUERY = False
ENABLE_NTFY = False
ENABLE_HIS = True
QUERY_INTERVAL = 300
SEVERITY_THRESHOLD = 5

[regions]
chest = torace, pulmon
abdomen = abdomen, abdominal

[questions]
chest = Is there a pneumonia

[supported_regions]
chest = true
abdominal = true
clavicle = false
"""


def test_reference_style_file_loads_and_warns_about_an_unproduced_region(tmp_path: Path) -> None:
    settings = _load(tmp_path, REFERENCE)
    assert settings.general.db_path == tmp_path / "xrayvision.db"
    assert settings.general.backup_dir == tmp_path / "backup"
    assert settings.users["admin"].password == "admin"
    assert settings.users["admin"].role == "admin"
    assert settings.users["ana"].password == "%(not interpolated)s"
    assert settings.users["ana"].role == "user"
    assert settings.dicom.remote_ae_ip == "192.168.3.50"
    assert settings.openai.url_secondary == "http://127.0.0.1:11434/v1/chat/completions"  # trailing / dropped
    assert settings.openai.api_key == "sk-no-key-required"
    assert settings.notifications.ntfy_url == "https://ntfy.sh/xrayvision-alerts"
    assert settings.fhir.url == "http://192.168.3.239:8080/fhir"
    assert settings.fhir.password == "fhir-pass"
    assert settings.processing.enable_his is True
    assert settings.processing.no_query is False
    assert settings.processing.query_interval == 300
    assert settings.processing.severity_threshold == 5
    assert settings.questions["chest"] == "Is there a pneumonia"
    assert settings.regions.match("Pulmon PA") == "chest"
    assert "abdominal" in settings.supported_regions
    assert "clavicle" not in settings.supported_regions  # false switches a default off
    assert len(settings.warnings) == 1
    assert "abdominal" in settings.warnings[0]
    assert "[supported_regions]" in settings.warnings[0]


# --- the command line ---------------------------------------------------------------------------------------------

def _run(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*xrayvision_command(), *args],
        cwd=tmp_path, input=stdin, capture_output=True, text=True, timeout=60, env=_clean_env(),
    )


def test_cli_exits_2_naming_the_bad_key(tmp_path: Path) -> None:
    config = _write(tmp_path / "bad.cfg", f"[dicom]\nAE_PORT = abc\n[dashboard]\nDASHBOARD_PORT = {free_port()}\n")
    result = _run(tmp_path, "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr
    assert "AE_PORT" in result.stderr


def test_cli_exits_2_for_a_missing_config(tmp_path: Path) -> None:
    result = _run(tmp_path, "--config", str(tmp_path / "missing.cfg"))
    assert result.returncode == 2, result.stderr
    assert "missing.cfg" in result.stderr


class _ServerStarted(Exception):
    pass


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Run cli.main in-process without ever serving: reaching app.serve records the host and stops there."""
    hosts: list[str] = []

    def serve(settings):  # type: ignore[no-untyped-def]
        hosts.append(settings.dashboard.bind_address)
        raise _ServerStarted

    for name in [n for n in os.environ if n.startswith("XRAYVISION_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(app, "serve", serve)
    return hosts


def _exposed_config(tmp_path: Path, bind: str, password: str) -> Path:
    return _write(
        tmp_path / "exposed.cfg",
        f"[general]\nXRAYVISION_DB_PATH = {tmp_path / 'x.db'}\nIMAGES_DIR = {tmp_path / 'images'}\n"
        f"[users]\nadmin = {password},admin\n"
        f"[dashboard]\nBIND_ADDRESS = {bind}\nDASHBOARD_PORT = {free_port()}\n"
        f"[dicom]\nAE_PORT = {free_port()}\n",
    )


def test_cli_refuses_a_network_facing_dashboard_with_a_well_known_password(
    tmp_path: Path, no_server: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    config = _exposed_config(tmp_path, "0.0.0.0", "admin")
    assert cli.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err
    assert "admin" in err
    assert "well-known password" in err
    assert "0.0.0.0" in err
    assert no_server == []


@pytest.mark.parametrize(("bind", "password"), [("127.0.0.1", "admin"), ("0.0.0.0", "Str0ng-and-l0ng-pw")])
def test_cli_starts_when_loopback_or_the_password_is_strong(
    tmp_path: Path, no_server: list[str], bind: str, password: str
) -> None:
    config = _exposed_config(tmp_path, bind, password)
    with pytest.raises(_ServerStarted):
        cli.main(["--config", str(config)])
    assert no_server == [bind]


def test_hash_password_prints_a_line_for_users_that_verifies(tmp_path: Path) -> None:
    result = _run(tmp_path, "hash-password", stdin="s3cret\n")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("scrypt$")
    assert line.endswith(",user")
    stored = line.rsplit(",", 1)[0]
    assert "s3cret" not in stored
    assert verify_password(stored, "s3cret")
    assert not verify_password(stored, "s3cret ")
    assert not verify_password(stored, "wrong")
    # The printed line is what goes after `name =` in [users].
    settings = _load(tmp_path, f"[users]\nana = {line}\n")
    assert settings.users["ana"].role == "user"
    assert verify_password(settings.users["ana"].password, "s3cret")


def test_hash_password_with_admin_role_and_empty_password(tmp_path: Path) -> None:
    admin = _run(tmp_path, "hash-password", "--role", "admin", stdin="another\n")
    assert admin.returncode == 0, admin.stderr
    assert admin.stdout.strip().endswith(",admin")
    assert verify_password(admin.stdout.strip().rsplit(",", 1)[0], "another")
    empty = _run(tmp_path, "hash-password", stdin="\n")
    assert empty.returncode == 2
    assert "empty password" in empty.stderr


def test_start_reports_a_supported_region_that_no_rule_produces(
    tmp_path: Path, no_server: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    config = _exposed_config(tmp_path, "127.0.0.1", "Str0ng-and-l0ng-pw")
    config.write_text(config.read_text() + "[supported_regions]\nabdominal = true\n")
    with caplog.at_level(logging.WARNING, logger="xrayvision"), pytest.raises(_ServerStarted):
        cli.main(["--config", str(config)])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("abdominal" in w and "no [regions] rule produces" in w for w in warnings), warnings
