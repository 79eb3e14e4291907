"""Structural checks of the deployment files: compose, Dockerfile, gunicorn config, example.env.

No Docker engine is needed: the files are parsed, the gunicorn config is executed with a
controlled environment, and its hooks run in subprocesses (they change os.environ and may import
prometheus_client, whose multiprocess mode is fixed at first import).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from media_service.settings import ConfigError, Settings
from realservers.process import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
EXAMPLE_ENV = ROOT / "config" / "example.env"
GUNICORN_CONF = ROOT / "config" / "gunicorn.conf.py"
SETTINGS_SOURCES = [ROOT / "media_service" / "settings.py"]
# Read by the test suite, not the service.
TEST_ONLY_NAMES = {"MEDIA_TEST_MONGO_URL", "MEDIA_TEST_S3_ENDPOINT"}
# Everything the gunicorn config reads; cleared so the developer's shell cannot leak in.
GUNICORN_ENV = (
    "PORT",
    "WEB_CONCURRENCY",
    "FORWARDED_ALLOW_IPS",
    "PROMETHEUS_MULTIPROC_DIR",
    "GUNICORN_OWNED_PROMETHEUS_DIR",
)
CONFIG_ERROR_PREFIX = "media-service: configuration error: "
LONG_RUNNING = {"mongo", "minio", "media", "nginx"}
NGINX_SITE = ROOT / "config" / "nginx" / "media.conf"


# --- helpers ------------------------------------------------------------------------------------


def settings_env_names() -> set[str]:
    names: set[str] = set()
    for path in SETTINGS_SOURCES:
        if path.exists():
            names.update(re.findall(r'"(MEDIA_[A-Z0-9_]+)"', path.read_text()))
    return names


def parse_env_file(path: Path) -> tuple[dict[str, str], set[str], list[str]]:
    """Return (active assignments, names only shown commented out, all lines)."""
    lines = path.read_text().splitlines()
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in lines:
        if m := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            active[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"#\s?([A-Z][A-Z0-9_]*)=.*", line):
            commented.add(m.group(1))
    return active, commented, lines


def clean_env(**overrides: str) -> dict[str, str]:
    """os.environ without any variable the deployment reads, plus the given overrides."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MEDIA_", "GUNICORN_", "AWS_")) and k not in GUNICORN_ENV
    }
    # The hooks import media_service; make that independent of how the package is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def interpolate_defaults(value: str) -> str:
    """Resolve ${VAR:-default} / ${VAR-default} / ${VAR} as compose does with VAR unset."""
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "", value)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued instruction"
    result = []
    for line in joined:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def load_gunicorn_conf(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """Execute the config file as gunicorn would, with only `env` set among the names it reads."""
    for name in list(os.environ):
        if name.startswith("GUNICORN_") or name in GUNICORN_ENV:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    namespace: dict[str, Any] = {"__name__": "__config__", "__file__": str(GUNICORN_CONF)}
    exec(compile(GUNICORN_CONF.read_text(), str(GUNICORN_CONF), "exec"), namespace)
    return namespace


def run_hooks(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `script` after exec'ing the config file (as `conf`) in a fresh interpreter."""
    prelude = textwrap.dedent(
        f"""
        import json, os, sys, types
        conf = {{"__name__": "__config__", "__file__": {str(GUNICORN_CONF)!r}}}
        exec(compile(open(conf["__file__"]).read(), conf["__file__"], "exec"), conf)
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_the_five_services(compose: dict[str, Any]) -> None:
    assert {"mongo", "minio", "createbucket", "media", "nginx"} <= set(compose["services"])


def test_media_waits_for_healthy_backends_and_the_bucket(compose: dict[str, Any]) -> None:
    depends = compose["services"]["media"]["depends_on"]
    assert depends == {
        "mongo": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
        "createbucket": {"condition": "service_completed_successfully"},
    }
    assert compose["services"]["createbucket"]["depends_on"]["minio"] == {
        "condition": "service_healthy"
    }


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    long_running = {
        name
        for name, svc in compose["services"].items()
        if str(svc.get("restart", "no")) != "no" and not svc.get("profiles")
    }
    assert long_running == LONG_RUNNING  # one-shot jobs restart "no"; guards a vacuous pass
    for name in long_running:
        check = compose["services"][name].get("healthcheck")
        assert check and not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert len(check["test"]) > 1, name


def test_healthchecks_use_tools_present_in_their_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["mongo"]["healthcheck"]["test"][1] == "mongosh"
    # The MinIO image has shipped mc instead of curl since late 2023.
    assert services["minio"]["healthcheck"]["test"][1:] == ["mc", "ready", "local"]
    media_check = " ".join(services["media"]["healthcheck"]["test"])
    assert services["media"]["healthcheck"]["test"][1] == "python"  # slim image: no curl
    assert "http://127.0.0.1:8000/readyz" in media_check


def test_bucket_created_is_the_bucket_the_service_uses(compose: dict[str, Any]) -> None:
    services = compose["services"]
    script = " ".join(services["createbucket"]["command"])
    assert "mc alias set" in script
    created = re.findall(r"mc mb --ignore-existing \S+/([a-z0-9.-]+)", script)
    storage = re.fullmatch(
        r"s3://([^/]+)(/.*)?", service_env(services["media"])["MEDIA_STORAGE_URL"]
    )
    assert storage is not None
    assert created == [storage.group(1)]
    assert services["media"]["environment"]["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"


def test_media_service_settings_validate(compose: dict[str, Any]) -> None:
    env = {k: interpolate_defaults(v) for k, v in service_env(compose["services"]["media"]).items()}
    settings = Settings.from_env(env)
    assert settings.database_kind == "mongodb"
    assert settings.storage_kind == "s3"
    # A blank MEDIA_DATA_DIR would replace the image's /data with ./var inside the container.
    assert env.get("MEDIA_DATA_DIR", "/data") == "/data"
    # SIGKILL must not come before gunicorn's graceful_timeout (30 s) has run out.
    grace = compose["services"]["media"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > 30


def test_only_the_front_door_is_published_on_8000(compose: dict[str, Any]) -> None:
    services = compose["services"]
    media = services["media"]
    assert "ports" not in media  # clients come in through nginx
    assert [str(p) for p in media["expose"]] == ["8000"]
    assert media["build"]["target"] == "runtime"
    assert media["restart"] == "unless-stopped"
    published = {
        name: [str(p) for p in svc.get("ports", [])]
        for name, svc in services.items()
        if svc.get("ports")
    }
    assert published == {"nginx": ["8000:8080"]}


def test_nginx_front_door_service(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    assert str(nginx["image"]).startswith("nginx:")
    assert nginx["restart"] == "unless-stopped"
    assert nginx["depends_on"] == {"media": {"condition": "service_healthy"}}
    volumes = [str(v) for v in nginx["volumes"]]
    assert "./config/nginx/media.conf:/etc/nginx/conf.d/default.conf:ro" in volumes
    assert (ROOT / "config" / "nginx" / "media.conf").is_file()
    # Buffered request bodies go to a volume, not the container's writable layer.
    assert any(v.endswith(":/var/cache/nginx") for v in volumes)
    assert {v.split(":")[0] for v in volumes if not v.startswith(".")} <= set(compose["volumes"])
    check = nginx["healthcheck"]["test"]
    assert check[:2] == ["CMD", "wget"]  # the alpine image has busybox wget, no curl
    assert "http://127.0.0.1:8080/healthz" in check
    assert int(str(nginx["stop_grace_period"]).rstrip("s")) > 30  # uploads in flight finish


def test_nginx_site_points_at_the_media_service(compose: dict[str, Any]) -> None:
    site = NGINX_SITE.read_text()
    assert re.search(r"^\s*listen 8080;", site, re.M)  # the container port compose publishes
    assert re.search(r"^\s*server media:8000;", site, re.M)  # the media service, its port
    assert "8000" in [str(p) for p in compose["services"]["media"]["expose"]]


def test_media_behind_nginx_trusts_one_proxy_hop(compose: dict[str, Any]) -> None:
    media = compose["services"]["media"]
    env = {k: interpolate_defaults(v) for k, v in service_env(media).items()}
    assert Settings.from_env(env).trusted_proxies == 1
    # gunicorn itself still trusts no one (the app's ProxyFix is the one knob, see the config).
    assert not env.get("FORWARDED_ALLOW_IPS")
    # The service's read limits are configurable here too (blank: the defaults nginx mirrors).
    for name in ("GUNICORN_HEADER_TIMEOUT", "GUNICORN_BODY_IDLE_TIMEOUT", "MEDIA_UPLOAD_MIN_RATE"):
        assert name in env and env[name] == ""


def test_tests_service_is_opt_in(compose: dict[str, Any]) -> None:
    tests = compose["services"]["tests"]
    assert tests["profiles"] == ["test"]
    env = service_env(tests)
    assert env["MEDIA_TEST_MONGO_URL"].startswith("mongodb://mongo:27017/")
    assert env["MEDIA_TEST_S3_ENDPOINT"] == "http://minio:9000"


def test_compose_uses_only_known_media_variables(compose: dict[str, Any]) -> None:
    known = settings_env_names() | TEST_ONLY_NAMES
    used = set(re.findall(r"\b(MEDIA_[A-Z0-9_]+)", COMPOSE.read_text()))
    for service in compose["services"].values():
        used |= {k for k in service_env(service) if k.startswith("MEDIA_")}
    assert used, "compose configures no MEDIA_* variable at all?"
    assert used <= known, f"unknown to the settings module: {sorted(used - known)}"


def _compose_commands() -> list[list[str]]:
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    return candidates


def test_docker_compose_accepts_the_file() -> None:
    """`compose config` validates without a daemon; skipped where no compose CLI is installed."""
    env = clean_env()
    env.pop("COMPOSE_FILE", None)
    env.pop("COMPOSE_PROFILES", None)
    for command in _compose_commands():
        try:
            probe = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=60, env=env
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode != 0:  # e.g. the docker CLI without the compose plugin
            continue
        result = subprocess.run(
            [*command, "-f", str(COMPOSE), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
        if result.returncode != 0 and "daemon" in result.stderr.lower():
            pytest.skip(f"{' '.join(command)} needs a Docker daemon here: {result.stderr[:200]}")
        assert result.returncode == 0, result.stderr
        return
    pytest.skip("no working `docker compose` or `docker-compose` on this machine")


# --- config/example.env -------------------------------------------------------------------------


def test_example_env_lists_every_setting() -> None:
    active, commented, _ = parse_env_file(EXAMPLE_ENV)
    listed = set(active) | commented
    missing = settings_env_names() - listed
    assert not missing, f"not in config/example.env: {sorted(missing)}"
    expected = {
        "PORT",
        "WEB_CONCURRENCY",
        "GUNICORN_BIND",
        "GUNICORN_THREADS",
        "GUNICORN_TIMEOUT",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        *TEST_ONLY_NAMES,
    }
    assert expected <= listed, sorted(expected - listed)


def test_example_env_uses_only_known_media_variables() -> None:
    active, commented, _ = parse_env_file(EXAMPLE_ENV)
    media = {n for n in set(active) | commented if n.startswith("MEDIA_")}
    unknown = media - settings_env_names() - TEST_ONLY_NAMES
    assert not unknown, f"unknown to the settings module: {sorted(unknown)}"


def test_example_env_names_each_variable_once_with_a_comment_above() -> None:
    _, _, lines = parse_env_file(EXAMPLE_ENV)
    seen: set[str] = set()
    for i, line in enumerate(lines):
        m = re.fullmatch(r"#?\s?([A-Z][A-Z0-9_]*)=.*", line)
        if not m:
            continue
        assert m.group(1) not in seen, f"{m.group(1)} listed twice"
        seen.add(m.group(1))
        above = lines[i - 1] if i else ""
        is_description = above.startswith("# ") and not re.match(r"#\s?[A-Z][A-Z0-9_]*=", above)
        assert is_description, f"line {i + 1} ({m.group(1)}) has no comment line above it"


def test_example_env_keeps_secrets_commented_out_as_placeholders() -> None:
    active, commented, lines = parse_env_file(EXAMPLE_ENV)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD"):
        assert name not in active
        assert name in commented
        (line,) = [ln for ln in lines if re.match(rf"#\s?{name}=", ln)]
        assert re.fullmatch(rf"#\s?{name}=<[a-z-]+>", line), line


def test_example_env_values_are_accepted_by_the_settings_module() -> None:
    active, _, _ = parse_env_file(EXAMPLE_ENV)
    Settings.from_env(active)
    assert int(active["MEDIA_S3_MAX_POOL_CONNECTIONS"]) >= int(active["GUNICORN_THREADS"])


def test_example_env_gunicorn_values_are_the_config_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sourcing the example file must change nothing: its values are the defaults."""
    active, _, _ = parse_env_file(EXAMPLE_ENV)
    gunicorn_env = {
        k: v for k, v in active.items() if k.startswith("GUNICORN_") or k in GUNICORN_ENV
    }
    assert {"PORT", "WEB_CONCURRENCY", "GUNICORN_TIMEOUT"} <= set(gunicorn_env)
    from gunicorn.config import Config

    defaults = load_gunicorn_conf(monkeypatch)
    from_example = load_gunicorn_conf(monkeypatch, **gunicorn_env)
    known = Config().settings
    assert {k: v for k, v in from_example.items() if k in known and not callable(v)} == {
        k: v for k, v in defaults.items() if k in known and not callable(v)
    }


# --- Dockerfile and .dockerignore ---------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    instructions = dockerfile_instructions()
    froms = [args for ins, args in instructions if ins == "FROM"]
    assert len(froms) >= 2
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    final_from = final_stage()[0][1]
    assert final_from.split()[0] in ("${PYTHON_IMAGE}", "python:3.11-slim")
    assert any("--from=builder" in args for ins, args in final_stage() if ins == "COPY")


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for ins, args in final_stage() if ins == "USER"]
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"


def test_dockerfile_environment_healthcheck_and_command() -> None:
    stage = final_stage()
    env_text = " ".join(args for ins, args in stage if ins == "ENV")
    for assignment in ("PYTHONUNBUFFERED=1", "GUNICORN_BIND=0.0.0.0:8000", "MEDIA_DATA_DIR=/data"):
        assert assignment in env_text
    assert ("WORKDIR", "/app") in stage
    assert ("EXPOSE", "8000") in stage
    assert any(ins == "VOLUME" and "/data" in args for ins, args in stage)
    copies = [args for ins, args in stage if ins == "COPY"]
    assert any(c.split()[0] == "app.py" for c in copies)
    assert any(c.split()[0].rstrip("/") == "config" for c in copies)

    (healthcheck,) = [args for ins, args in stage if ins == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/healthz" in healthcheck
    probe = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert probe[0] == "python"  # slim images have no curl
    compile(probe[2], "<healthcheck>", "exec")

    (cmd,) = [args for ins, args in stage if ins == "CMD"]
    assert json.loads(cmd) == ["gunicorn", "--config", "config/gunicorn.conf.py", "app:app"]


def test_dockerfile_test_stage_exists_for_the_compose_tests_service() -> None:
    froms = [args.split() for ins, args in dockerfile_instructions() if ins == "FROM"]
    stages = {parts[-1] for parts in froms if len(parts) == 3 and parts[1].upper() == "AS"}
    assert {"builder", "test", "runtime"} <= stages


def test_dockerignore_excludes_local_state_but_not_what_the_build_copies() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "var", ".git", ".pytest_cache", "bench/results"} <= patterns
    assert any(p.endswith(".env") for p in patterns)  # secrets stay out of the context
    for needed in ("app.py", "config", "pyproject.toml", "media_service", "tests"):
        assert needed not in patterns and f"{needed}/" not in patterns


# --- config/gunicorn.conf.py --------------------------------------------------------------------


def test_gunicorn_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_gunicorn_conf(monkeypatch)
    assert conf["bind"] == ["127.0.0.1:8000"]  # loopback unless told otherwise (SPEC §5)
    assert conf["worker_class"] == "media_service.serving.worker.MediaThreadWorker"
    assert conf["workers"] == 2
    assert conf["threads"] == 8
    assert conf["timeout"] == 120
    assert conf["graceful_timeout"] == 30
    assert conf["keepalive"] == 5
    assert conf["max_requests"] == 0
    assert conf["accesslog"] is None
    assert conf["errorlog"] == "-"
    assert conf["preload_app"] is False
    assert "*" not in conf["forwarded_allow_ips"]
    # The longest token the service accepts must fit in one header field (it answered 431).
    from media_service.auth.tokens import MAX_TOKEN_LENGTH

    assert conf["limit_request_field_size"] >= len("Authorization: Bearer \r\n") + MAX_TOKEN_LENGTH
    assert conf["limit_request_line"] == 8190  # gunicorn's maximum
    assert conf["limit_request_fields"] == 100
    if os.path.isdir("/dev/shm"):
        assert conf["worker_tmp_dir"] == "/dev/shm"


def test_gunicorn_port_bind_and_workers_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_gunicorn_conf(monkeypatch, PORT="8123")["bind"] == ["127.0.0.1:8123"]
    conf = load_gunicorn_conf(monkeypatch, PORT="8123", GUNICORN_BIND="0.0.0.0:8000")
    assert conf["bind"] == ["0.0.0.0:8000"]
    conf = load_gunicorn_conf(monkeypatch, GUNICORN_BIND="127.0.0.1:1, [::1]:2")
    assert conf["bind"] == ["127.0.0.1:1", "[::1]:2"]
    conf = load_gunicorn_conf(monkeypatch, WEB_CONCURRENCY="5", GUNICORN_THREADS="3")
    assert (conf["workers"], conf["threads"]) == (5, 3)
    conf = load_gunicorn_conf(
        monkeypatch, GUNICORN_MAX_REQUESTS="1000", GUNICORN_MAX_REQUESTS_JITTER="100"
    )
    assert (conf["max_requests"], conf["max_requests_jitter"]) == (1000, 100)


def test_gunicorn_blank_variables_mean_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_gunicorn_conf(monkeypatch, PORT="", GUNICORN_BIND=" ", GUNICORN_THREADS="")
    assert conf["bind"] == ["127.0.0.1:8000"]
    assert conf["threads"] == 8


def test_gunicorn_accepts_every_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each setting the file defines passes gunicorn's own validators."""
    from gunicorn.config import Config

    conf = load_gunicorn_conf(monkeypatch, GUNICORN_CONTROL_SOCKET="/tmp/media-test.ctl")
    cfg = Config()
    applied = 0
    for name, value in conf.items():
        if name in cfg.settings:
            cfg.set(name, value)
            applied += 1
    assert applied >= 15
    assert cfg.worker_class_str == "media_service.serving.worker.MediaThreadWorker"
    from gunicorn.workers.gthread import ThreadWorker

    from media_service.serving.worker import MediaThreadWorker

    assert cfg.worker_class is MediaThreadWorker
    assert issubclass(MediaThreadWorker, ThreadWorker)
    assert cfg.forwarded_allow_ips == []
    assert callable(cfg.on_starting) and callable(cfg.child_exit) and callable(cfg.on_exit)


@pytest.mark.parametrize(
    ("name", "value"),
    [("GUNICORN_THREADS", "many"), ("PORT", "70000"), ("GUNICORN_TIMEOUT", "0")],
)
def test_gunicorn_invalid_value_is_one_line_and_status_2(name: str, value: str) -> None:
    result = run_hooks("", clean_env(**{name: value}))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(CONFIG_ERROR_PREFIX + name)


def test_on_starting_rejects_bad_settings_with_one_line(tmp_path: Path) -> None:
    env = clean_env(MEDIA_DATABASE_URL="postgres://db/media", TMPDIR=str(tmp_path))
    result = run_hooks("conf['on_starting'](None)", env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(CONFIG_ERROR_PREFIX + "MEDIA_DATABASE_URL")
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # the metrics directory it made is gone again


@pytest.mark.parametrize("name", ["GUNICORN_HEADER_TIMEOUT", "GUNICORN_BODY_IDLE_TIMEOUT"])
def test_on_starting_rejects_bad_read_limits_with_one_line(tmp_path: Path, name: str) -> None:
    env = clean_env(**{name: "forever"}, MEDIA_DATA_DIR=str(tmp_path / "var"), TMPDIR=str(tmp_path))
    result = run_hooks("conf['on_starting'](None)", env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(CONFIG_ERROR_PREFIX + name)


def test_on_starting_creates_and_on_exit_removes_a_metrics_dir(tmp_path: Path) -> None:
    env = clean_env(MEDIA_DATA_DIR=str(tmp_path / "var"), TMPDIR=str(tmp_path))
    result = run_hooks(
        """
        conf["on_starting"](None)
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        existed = os.path.isdir(path)
        conf["on_exit"](types.SimpleNamespace(reexec_pid=0))
        print(json.dumps({"path": path, "existed": existed, "after": os.path.exists(path)}))
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["path"]).parent == tmp_path
    assert report["existed"] and not report["after"]


def test_on_starting_empties_a_given_metrics_dir_and_on_exit_keeps_it(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "counter_123.db").write_bytes(b"stale")
    (metrics / "README").write_text("not ours")
    env = clean_env(MEDIA_DATA_DIR=str(tmp_path / "var"), PROMETHEUS_MULTIPROC_DIR=str(metrics))
    result = run_hooks(
        """
        conf["on_starting"](None)
        conf["on_exit"](types.SimpleNamespace(reexec_pid=0))
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in metrics.iterdir()) == ["README"]


def test_usr2_successor_leaves_live_metrics_alone(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "counter_123.db").write_bytes(b"live")
    env = clean_env(MEDIA_DATA_DIR=str(tmp_path / "var"), PROMETHEUS_MULTIPROC_DIR=str(metrics))
    result = run_hooks("conf['on_starting'](types.SimpleNamespace(master_pid=123))", env)
    assert result.returncode == 0, result.stderr
    assert (metrics / "counter_123.db").exists()


def test_child_exit_marks_the_worker_dead(tmp_path: Path) -> None:
    # find_spec, not import: importing here would fix prometheus_client's mode for this process.
    if importlib.util.find_spec("prometheus_client") is None:
        pytest.skip("prometheus_client is not installed")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "gauge_livesum_4242.db").write_bytes(b"")
    (metrics / "gauge_livesum_4343.db").write_bytes(b"")
    env = clean_env(PROMETHEUS_MULTIPROC_DIR=str(metrics))
    result = run_hooks("conf['child_exit'](None, types.SimpleNamespace(pid=4242))", env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in metrics.iterdir()) == ["gauge_livesum_4343.db"]


# --- a real gunicorn ----------------------------------------------------------------------------

STUB_APP = """
import os

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").encode()]
"""


def _gunicorn(tmp_path: Path, app: str = STUB_APP, **env: str) -> subprocess.Popen[str]:
    """gunicorn with the config file serving `app` (the source of a module's `app`)."""
    (tmp_path / "stub_app.py").write_text(app)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(GUNICORN_CONF),
            "--chdir",
            str(tmp_path),
            "stub_app:app",
        ],
        env=clean_env(TMPDIR=str(tmp_path), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _terminate(proc: subprocess.Popen[str]) -> str:
    """SIGTERM gunicorn, wait for its exit (killing it if it hangs); its stderr."""
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _first_answer(proc: subprocess.Popen[str], url: str) -> bytes:
    """The body of the first answer to GET `url`, retried while gunicorn boots (30 s at most)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30
    while True:
        try:
            with opener.open(url, timeout=5) as response:
                body: bytes = response.read()
                return body
        except OSError:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "gunicorn did not answer within 30 s"
            time.sleep(0.1)


@pytest.mark.integration
def test_gunicorn_refuses_to_start_on_bad_settings(tmp_path: Path) -> None:
    port = free_port()
    proc = _gunicorn(
        tmp_path, GUNICORN_BIND=f"127.0.0.1:{port}", MEDIA_STORAGE_URL="ftp://example/media"
    )
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2
    errors = [ln for ln in stderr.splitlines() if ln.startswith(CONFIG_ERROR_PREFIX)]
    assert len(errors) == 1 and "MEDIA_STORAGE_URL" in errors[0]
    assert "Traceback" not in stderr
    assert "Listening at" not in stderr  # validated before binding


@pytest.mark.integration
def test_gunicorn_serves_with_the_config(tmp_path: Path) -> None:
    port = free_port()
    proc = _gunicorn(
        tmp_path,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        GUNICORN_THREADS="2",
        MEDIA_DATA_DIR=str(tmp_path / "var"),
    )
    try:
        metrics_dir = _first_answer(proc, f"http://127.0.0.1:{port}/").decode()
        # Workers inherit the directory the master created before forking.
        assert metrics_dir and Path(metrics_dir).parent == tmp_path
        assert Path(metrics_dir).is_dir()
    finally:
        stderr = _terminate(proc)
    assert proc.returncode == 0, stderr
    assert "Using worker: media_service.serving.worker.MediaThreadWorker" in stderr
    assert not Path(metrics_dir).exists()  # on_exit cleaned up after itself


def test_settings_errors_are_single_lines() -> None:
    """The hook prints str(ConfigError); a multi-line message would break the one-line promise."""
    bad = [
        {"MEDIA_DATABASE_URL": "postgres://x/y"},
        {"MEDIA_STORAGE_URL": "ftp://x"},
        {"MEDIA_MAX_UPLOAD_BYTES": "lots"},
        {"MEDIA_LOG_LEVEL": "LOUD"},
    ]
    for env in bad:
        with pytest.raises(ConfigError) as excinfo:
            Settings.from_env(env)
        assert "\n" not in str(excinfo.value)


def test_post_fork_fixes_mallocs_mmap_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker asks glibc to mmap blocks >= 4 MiB (freed upload buffers leave the process);
    0 turns the tuning off."""
    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    import ctypes

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    conf = load_gunicorn_conf(monkeypatch)
    conf["post_fork"](None, None)
    assert calls == [(-3, 4 * 1024 * 1024)]

    calls.clear()
    conf = load_gunicorn_conf(monkeypatch, GUNICORN_MALLOC_MMAP_THRESHOLD="0")
    conf["post_fork"](None, None)
    assert calls == []


# --- worker_exit: a worker closes its app's clients -------------------------------------------

CLOSING_APP = """
import os

from media_service.factory import create_app
from media_service.storage.interfaces import Backends

_close = Backends.close


def close(self):
    _close(self)
    with open(os.environ["CLOSED_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")


Backends.close = close
app = create_app()
"""


def test_worker_exit_closes_the_apps_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once closed, the last connection to the SQLite file is gone: SQLite checkpoints the WAL
    and removes it."""
    import types

    from media_service.factory import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path))
    with app.test_client() as client:
        assert client.get("/v3/media", headers={"Authorization": "Basic eDp5"}).status_code == 401
    wal = tmp_path / "media.db-wal"
    assert wal.exists()
    conf = load_gunicorn_conf(monkeypatch)
    conf["worker_exit"](None, types.SimpleNamespace(loaded_app=app))
    assert not wal.exists()
    conf["worker_exit"](None, types.SimpleNamespace())  # a worker that never loaded the app
    conf["worker_exit"](None, types.SimpleNamespace(loaded_app=object()))  # not ours: left alone


def test_closing_the_backends_tries_every_client() -> None:
    from media_service.storage.interfaces import Backends

    closed: list[str] = []

    class Client:
        def __init__(self, name: str, fails: bool = False) -> None:
            self.name, self.fails = name, fails

        def close(self) -> None:
            closed.append(self.name)
            if self.fails:
                raise OSError(f"{self.name} would not close")

    backends = Backends(
        blobs=None,  # type: ignore[arg-type]
        media=None,  # type: ignore[arg-type]
        credentials=None,  # type: ignore[arg-type]
        closers=[Client("first", fails=True), Client("second")],
    )
    with pytest.raises(OSError, match="first would not close"):
        backends.close()
    assert closed == ["second", "first"]  # last opened first, and each one tried


@pytest.mark.integration
def test_gunicorn_workers_close_their_backends_on_exit(tmp_path: Path) -> None:
    closed_log = tmp_path / "closed.log"
    port = free_port()
    proc = _gunicorn(
        tmp_path,
        CLOSING_APP,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="2",
        MEDIA_DATA_DIR=str(tmp_path / "var"),
        CLOSED_LOG=str(closed_log),
    )
    try:
        assert b'"status"' in _first_answer(proc, f"http://127.0.0.1:{port}/healthz")
    finally:
        stderr = _terminate(proc)
    assert proc.returncode == 0, stderr
    assert "Exception during worker exit" not in stderr
    workers = {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", stderr)}
    assert len(workers) == 2
    assert {int(line) for line in closed_log.read_text().split()} == workers
