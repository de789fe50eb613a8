"""docker-compose.yml, Dockerfile and .dockerignore, checked without Docker.

Docker does not run where the tests run, so the compose file is checked in two ways: its
structure (services, health checks gating ``depends_on``, grace periods, one image for every
app service, values that agree with each other and with the package), and by running the
very commands, health checks and environment it declares as local processes, with the
container names and paths replaced by local ones (Redis database 13, a free port for the
collector, a temporary folder for every mount, a queue of this test's own). The demo
workload then has to produce MATCH, as ``docker compose up`` would print.

``docker compose config`` validates the file as well when the compose plugin is installed;
where it is not, the same file is checked against the Compose Specification's rules
(``test_compose_file_is_valid``; that check is itself tested on a broken copy).

Covers: docker-compose.yml, Dockerfile, .dockerignore
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from brokers import need_service

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BIN = Path(sys.executable).parent
REDIS_DB = 13

SERVICES = {"redis", "collector", "worker", "beat", "producer"}
APP_SERVICES = SERVICES - {"redis"}
# Installed into the image by `pip install '.[redis]'`, as into this venv by `pip install -e`.
VENV_EXECUTABLES = {"celery", "bugsnag-celery", "python"}
# Part of python:3.11-slim (Debian coreutils) without installing anything.
IMAGE_EXECUTABLES = {"test"}
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
GRACE_MINIMUM = 20.0  # seconds: Celery's warm shutdown plus the session counts' flush


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = compose()["services"]
    return svcs


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    return bool(check.get("test")) and not check.get("disable") and check["test"] != ["NONE"]


def health_command(service: dict[str, Any]) -> list[str]:
    """The health check's ``test`` as an argv (CMD as is, CMD-SHELL and strings through sh)."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    if kind == "CMD":
        return [str(part) for part in rest]
    assert kind == "CMD-SHELL", test
    return ["sh", "-c", " ".join(rest)]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def duration(value: Any) -> float:
    """A compose duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    text = str(value)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def option(argv: list[str], name: str) -> str:
    for i, part in enumerate(argv):
        if part == name:
            return argv[i + 1]
        if part.startswith(name + "="):
            return part[len(name) + 1 :]
    raise AssertionError(f"{name} not in {argv}")


def mounts(service: dict[str, Any]) -> list[str]:
    """Container paths of the service's tmpfs mounts and volumes."""
    tmpfs = service.get("tmpfs") or []
    paths = [tmpfs] if isinstance(tmpfs, str) else list(tmpfs)
    for volume in service.get("volumes") or []:
        paths.append(volume.split(":")[1] if isinstance(volume, str) else volume["target"])
    return [p.split(":")[0] for p in paths]


# -- the compose file's structure -----------------------------------------------------------


def test_compose_file_has_the_five_services_and_no_interpolation() -> None:
    assert set(services()) == SERVICES
    # What the tests run must be what compose runs: no $VAR resolved from the caller's shell.
    assert not [s for s in _strings(compose()) if "$" in s]


# The Compose Specification's names (compose-spec.io, schema compose-spec.json), for the
# check that runs where `docker compose` does not.
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent",
    "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota",
    "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on",
    "deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "env_file", "environment", "expose", "extends", "external_links", "extra_hosts",
    "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "links",
    "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform",
    "ports", "post_start", "pre_stop", "privileged", "profiles", "pull_policy", "read_only", "restart",
    "runtime", "scale", "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period",
    "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode", "uts",
    "volumes", "volumes_from", "working_dir",
}  # fmt: skip
TOP_KEYS = {"version", "name", "include", "services", "networks", "volumes", "secrets", "configs"}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")


def _structural_errors(data: dict[str, Any]) -> list[str]:
    """What ``docker compose config`` would reject in this file, checked by the spec's rules."""
    errors = [f"top-level key {k!r}" for k in data if k not in TOP_KEYS and not k.startswith("x-")]
    named_volumes = set(data.get("volumes") or {})
    svcs = data.get("services") or {}
    for name, svc in svcs.items():
        where = f"services.{name}"
        errors += [
            f"{where}: unknown key {k!r}" for k in svc if k not in SERVICE_KEYS and not k.startswith("x-")
        ]
        if "image" not in svc and "build" not in svc:
            errors.append(f"{where}: neither image nor build")
        cmd = svc.get("command")
        if cmd is not None and not (isinstance(cmd, str) or all(isinstance(c, str) for c in cmd)):
            errors.append(f"{where}.command: not a string or a list of strings")
        restart = svc.get("restart")
        if restart is not None and not re.fullmatch(r"no|always|unless-stopped|on-failure(:\d+)?", restart):
            errors.append(f"{where}.restart: {restart!r}")
        for key in ("stop_grace_period",):
            if key in svc and not DURATION.match(str(svc[key])):
                errors.append(f"{where}.{key}: not a duration")
        check = svc.get("healthcheck") or {}
        errors += [f"{where}.healthcheck: unknown key {k!r}" for k in check if k not in HEALTHCHECK_KEYS]
        for key in ("interval", "timeout", "start_period", "start_interval"):
            if key in check and not DURATION.match(str(check[key])):
                errors.append(f"{where}.healthcheck.{key}: not a duration")
        if "test" in check and not (
            isinstance(check["test"], str) or check["test"][0] in ("CMD", "CMD-SHELL", "NONE")
        ):
            errors.append(f"{where}.healthcheck.test: a list must start with CMD, CMD-SHELL or NONE")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in svcs:
                errors.append(f"{where}.depends_on: no service {dep!r}")
            condition = cond.get("condition") if isinstance(cond, dict) else None
            if condition not in ("service_started", "service_healthy", "service_completed_successfully"):
                errors.append(f"{where}.depends_on.{dep}: condition {condition!r}")
            if condition == "service_healthy" and "healthcheck" not in svcs.get(dep, {}):
                errors.append(f"{where}.depends_on.{dep}: service_healthy, but it has no healthcheck")
        for port in svc.get("ports") or []:
            match = re.fullmatch(r"((\d{1,3}\.){3}\d{1,3}:)?(\d+:)?(\d+)(/(tcp|udp))?", str(port))
            numbers = [int(n.rstrip(":")) for n in (match.group(3), match.group(4)) if n] if match else []
            if not match or not all(0 < n < 65536 for n in numbers):
                errors.append(f"{where}.ports: {port!r}")
        for volume in svc.get("volumes") or []:
            source, _, target = str(volume).partition(":")
            if not target.split(":")[0].startswith("/"):
                errors.append(f"{where}.volumes: {volume!r} has no absolute container path")
            if not source.startswith((".", "/", "~")) and source not in named_volumes:
                errors.append(f"{where}.volumes: {source!r} is not declared under volumes")
        for path in [svc["tmpfs"]] if isinstance(svc.get("tmpfs"), str) else svc.get("tmpfs") or []:
            if not path.startswith("/"):
                errors.append(f"{where}.tmpfs: {path!r}")
        env = svc.get("environment") or {}
        if isinstance(env, dict):
            errors += [f"{where}.environment.{k}: a {type(v).__name__}" for k, v in env.items()
                       if not isinstance(v, (str, int, float, bool, type(None)))]  # fmt: skip
    return errors


def test_compose_file_is_valid() -> None:
    """``docker compose config`` where the compose plugin runs; the spec's rules otherwise."""
    docker = shutil.which("docker")
    plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if plugin:
        assert docker is not None
        out = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
    assert _structural_errors(compose()) == []


def test_the_structural_check_finds_what_it_must() -> None:
    """The fallback check is itself tested: each kind of mistake it exists for is reported."""
    broken = compose()
    svc = broken["services"]["worker"]
    svc["comand"] = svc.pop("command")
    svc["healthcheck"]["interval"] = "2 seconds"
    svc["depends_on"]["cache"] = {"condition": "service_healthy"}
    broken["services"]["collector"]["volumes"] = ["collector-dat:/data"]
    broken["services"]["collector"]["ports"] = ["127.0.0.1:99339"]
    broken["servics"] = {}
    got = "\n".join(_structural_errors(broken))
    expected = [
        "unknown key 'comand'",
        "healthcheck.interval: not a duration",
        "no service 'cache'",
        "'collector-dat' is not declared",
        "ports: '127.0.0.1:99339'",
        "top-level key 'servics'",
    ]
    for part in expected:
        assert part in got, got


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [node] if isinstance(node, str) else []


def test_app_services_share_one_image_built_from_the_repository() -> None:
    svcs = services()
    builds = {json.dumps(svcs[name].get("build"), sort_keys=True) for name in APP_SERVICES}
    images = {svcs[name].get("image") for name in APP_SERVICES}
    assert len(builds) == 1 and len(images) == 1, (builds, images)
    for name in APP_SERVICES:
        build = svcs[name]["build"]
        context, dockerfile = (build, "Dockerfile") if isinstance(build, str) else (
            build.get("context", "."), build.get("dockerfile", "Dockerfile"))  # fmt: skip
        assert context == ".", f"{name}: build context {context!r}"
        assert (ROOT / context / dockerfile).is_file()
    assert str(svcs["redis"]["image"]).startswith("redis:")
    assert "build" not in svcs["redis"]


def test_health_checks_gate_depends_on() -> None:
    svcs = services()
    for name, svc in svcs.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in svcs, f"{name} depends on unknown service {dep}"
            assert spec["condition"] in CONDITIONS, f"{name}: {dep}: {spec}"
            if spec["condition"] == "service_healthy":
                assert has_healthcheck(svcs[dep]), f"{name} waits for {dep} to be healthy: it has no check"
    healthy = {name: _waits_for_healthy(svc) for name, svc in svcs.items()}
    assert {"worker", "collector"} <= healthy["producer"]
    assert {"redis", "collector"} <= healthy["worker"]
    assert "redis" in healthy["beat"]
    assert "beat" in svcs["producer"]["depends_on"]  # nothing is delivered without beat
    assert health_command(svcs["redis"]) == ["redis-cli", "ping"]


def _waits_for_healthy(service: dict[str, Any]) -> set[str]:
    deps = service.get("depends_on") or {}
    return {dep for dep, spec in deps.items() if spec["condition"] == "service_healthy"}


def test_stop_grace_periods_and_restart_policy() -> None:
    svcs = services()
    for name in ("worker", "beat"):
        assert duration(svcs[name]["stop_grace_period"]) >= GRACE_MINIMUM, name
    assert svcs["producer"]["restart"] == "no"  # the string: a bare `no` is YAML's false
    assert duration("1m30s") == 90 and duration("500ms") == 0.5


def test_environment_variables_are_read_by_the_package() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "bugsnag_celery").rglob("*.py"))
    names = {k for svc in services().values() for k in environment(svc)}
    names |= set(re.findall(r"\bBUGSNAG_[A-Z0-9_]+", COMPOSE.read_text()))
    ours = {n for n in names if n.startswith("BUGSNAG_")}
    assert ours, "the compose file configures nothing"
    for name in sorted(ours):
        assert f'"{name}"' in source, f"{name} is set in docker-compose.yml but no module reads it"
    for name in ("worker", "beat", "producer"):
        env = environment(services()[name])
        for var in ("BROKER", "COLLECTOR", "QUEUE"):
            assert f"BUGSNAG_CELERY_DEMO_{var}" in env, f"{name} lacks BUGSNAG_CELERY_DEMO_{var}"


def test_executables_and_celery_apps_exist() -> None:
    svcs = services()
    for name in APP_SERVICES:
        argvs = [command(svcs[name])] + ([health_command(svcs[name])] if "healthcheck" in svcs[name] else [])
        for argv in argvs:
            exe = argv[0]
            if exe in VENV_EXECUTABLES:
                assert (BIN / exe).exists(), f"{name}: {exe} is not installed in {BIN}"
            else:
                assert exe in IMAGE_EXECUTABLES and shutil.which(exe), f"{name}: unknown executable {exe}"
            if exe == "celery":
                module = option(argv, "-A")
                assert importlib.util.find_spec(module) is not None, f"{name}: -A {module} is not importable"


def test_values_agree_across_services() -> None:
    """The producer sends where the worker listens, and the checks look where things are."""
    svcs = services()
    worker, beat, producer, collector = (svcs[n] for n in ("worker", "beat", "producer", "collector"))
    env = environment(worker)
    assert environment(beat) == env == environment(producer)
    worker_cmd, producer_cmd, collector_cmd = command(worker), command(producer), command(collector)
    assert "-B" not in worker_cmd and "--beat" not in worker_cmd  # beat is its own service
    assert command(beat)[command(beat).index("-A") + 2] == "beat"
    assert option(worker_cmd, "-Q") == env["BUGSNAG_CELERY_DEMO_QUEUE"]
    assert option(producer_cmd, "--broker") == env["BUGSNAG_CELERY_DEMO_BROKER"]
    assert option(producer_cmd, "--collector") == env["BUGSNAG_CELERY_DEMO_COLLECTOR"]
    assert "--no-worker" in producer_cmd
    # the host names in the URLs are services of the file
    for url in (env["BUGSNAG_CELERY_DEMO_BROKER"], env["BUGSNAG_CELERY_DEMO_COLLECTOR"]):
        host = re.match(r"\w+://([^:/]+)", url)
        assert host and host.group(1) in svcs, url
    # the collector: its port is the one published, checked and used; its database is on a volume
    port = option(collector_cmd, "--port")
    assert env["BUGSNAG_CELERY_DEMO_COLLECTOR"].endswith(f":{port}")
    assert any(str(p).endswith(f":{port}") for p in collector["ports"])
    assert f"127.0.0.1:{port}/" in " ".join(health_command(collector))
    db = option(collector_cmd, "--db")
    assert os.path.dirname(db) in mounts(collector)
    volume = collector["volumes"][0].split(":")[0]
    assert volume in (compose().get("volumes") or {})
    # the worker's readiness file is in its own folder, which is fresh on every start
    folder = env["BUGSNAG_CELERY_DEMO_DIR"]
    assert health_command(worker)[-1] == f"{folder}/worker.ready"
    assert "worker.ready" in (ROOT / "bugsnag_celery" / "tools" / "demo" / "app.py").read_text()
    for svc in (worker, beat):
        assert folder in mounts(svc)


# -- the Dockerfile and its build context ---------------------------------------------------


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    instructions = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]
    froms = [arg for kind, arg in instructions if kind == "FROM"]
    assert len(froms) == 1 and froms[0].startswith("python:3"), froms
    runs = " ".join(arg for kind, arg in instructions if kind == "RUN")
    assert re.search(r"pip install [^&]*'\.\[redis\]'", runs), runs
    users = [arg for kind, arg in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    user = users[-1].split(":")[0]
    # the collector's volume folder exists in the image and belongs to that user
    target = os.path.dirname(option(command(services()["collector"]), "--db"))
    assert re.search(rf"mkdir [^&]*{re.escape(target)}\b", runs)
    assert re.search(rf"chown [^&]*{user}[^&]*{re.escape(target)}\b", runs)
    cmd = json.loads(next(arg for kind, arg in reversed(instructions) if kind == "CMD"))
    assert cmd[0] in VENV_EXECUTABLES and (BIN / cmd[0]).exists()
    assert cmd == command(services()["collector"])  # the default is the collector


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (exception, regex), Docker's syntax: * ? ** and ! exceptions."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        patterns.append((negate, re.compile(regex)))
    return patterns


def _ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a folder excludes its files
    ignored = False
    for negate, regex in patterns:
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def test_build_context_has_what_the_install_needs() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover (3.9, 3.10: the backport, a test dependency there)
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = _ignore_patterns()
    hatch = project["tool"]["hatch"]
    needed = ["pyproject.toml", project["project"]["readme"], hatch["version"]["path"]]
    for package in hatch["build"]["targets"]["wheel"]["packages"]:
        needed += [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*") if p.is_file()
                   and "__pycache__" not in p.parts]  # fmt: skip
    assert "bugsnag_celery/tools/demo/app.py" in needed
    for path in needed:
        assert (ROOT / path).exists() and not _ignored(path, patterns), f"{path} is not in the build context"
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/support/workers.py",
        "bugsnag_celery/__pycache__/x.pyc",
    ):
        assert _ignored(path, patterns), f"{path} would be sent to the Docker daemon"


# -- the same commands, without Docker ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """The compose services as local processes: container names and paths made local."""

    def __init__(self, tmp: Path, queue: str, port: int) -> None:
        self.tmp, self.queue, self.port = tmp, queue, port
        self.svcs = services()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def folder(self, name: str, container_path: str) -> Path:
        return self.tmp / name / container_path.strip("/").replace("/", "_")

    def local(self, name: str, value: str) -> str:
        if value == "bugsnag-celery-demo":  # the queue: this test's own
            return self.queue
        if value == "0.0.0.0":
            return "127.0.0.1"
        if value == "9339":
            return str(self.port)
        value = re.sub(r"redis://redis:6379(/\d+)?", f"redis://127.0.0.1:6379/{REDIS_DB}", value)
        value = value.replace("http://collector:9339", f"http://127.0.0.1:{self.port}")
        value = value.replace("127.0.0.1:9339", f"127.0.0.1:{self.port}")
        svc = self.svcs[name]
        paths = set(mounts(svc)) | {environment(svc).get("BUGSNAG_CELERY_DEMO_DIR", "/nonexistent")}
        for path in sorted(paths, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                value = str(self.folder(name, path)) + value[len(path) :]
        return value

    def argv(self, name: str, argv: list[str]) -> list[str]:
        exe = argv[0]
        path = str(BIN / exe) if exe in VENV_EXECUTABLES else shutil.which(exe)
        assert path, exe
        return [path] + [self.local(name, a) for a in argv[1:]]

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUGSNAG_")}
        env.update({k: self.local(name, v) for k, v in environment(self.svcs[name]).items()})
        env["PYTHONUNBUFFERED"] = "1"  # as the Dockerfile's ENV
        env["TMPDIR"] = str(self.tmp / name / "tmp")  # the container's own /tmp
        return env

    def home(self, name: str) -> Path:
        """The container: its mounts exist (a tmpfs or volume is an empty folder), its workdir."""
        for path in mounts(self.svcs[name]):
            self.folder(name, path).mkdir(parents=True, exist_ok=True)
        (self.tmp / name / "tmp").mkdir(parents=True, exist_ok=True)
        home = self.tmp / name / "home"
        home.mkdir(parents=True, exist_ok=True)
        return home

    def start(self, name: str) -> None:
        home = self.home(name)
        with open(self.tmp / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                self.argv(name, command(self.svcs[name])), cwd=home, env=self.env(name),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def healthy(self, name: str) -> bool:
        svc = self.svcs[name]
        timeout = duration(svc["healthcheck"].get("timeout", "30s"))
        try:
            return (
                subprocess.run(
                    self.argv(name, health_command(svc)), cwd=self.tmp / name / "home", env=self.env(name),
                    capture_output=True, timeout=timeout,
                ).returncode == 0
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False

    def wait_healthy(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy(name):
                return
            assert self.procs[name].poll() is None, f"{name} exited:\n{self.logs()}"
            time.sleep(0.2)
        raise AssertionError(f"{name} did not become healthy in {timeout} s:\n{self.logs()}")

    def stop(self, names: list[str]) -> dict[str, float]:
        """SIGTERM (what `docker compose stop` sends, via tini); seconds until each exited."""
        started = time.monotonic()
        for name in names:
            self.procs[name].send_signal(signal.SIGTERM)
        took = {}
        for name in names:
            grace = duration(self.svcs[name].get("stop_grace_period", "10s"))
            try:
                self.procs[name].wait(max(0.1, started + grace + 10 - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            took[name] = time.monotonic() - started
        return took

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def logs(self) -> str:
        logs = sorted(self.tmp.glob("*.log"))
        return "\n".join(f"--- {log.stem} ---\n{log.read_text(errors='replace')[-4000:]}" for log in logs)


def test_the_compose_commands_run_the_demo_to_a_match(tmp_path: Path) -> None:
    need_service("Redis", 6379)
    import redis

    queue = f"bsc-compose-{uuid.uuid4().hex[:10]}"
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    results_before = set(client.scan_iter(match="celery-task-meta-*"))
    stack = Stack(tmp_path, queue, _free_port())
    svcs = stack.svcs
    if shutil.which("redis-cli"):  # the redis service's check, as is: the local Redis is on its port
        ping = stack.argv("redis", health_command(svcs["redis"]))
        out = subprocess.run(ping, capture_output=True, text=True)
        assert out.stdout.strip() == "PONG", out.stdout + out.stderr
    try:
        # in depends_on order: collector; worker and beat; then the producer
        stack.start("collector")
        stack.wait_healthy("collector")
        stack.start("worker")
        stack.start("beat")
        stack.wait_healthy("worker")
        assert stack.procs["beat"].poll() is None, stack.logs()
        producer = subprocess.run(
            stack.argv("producer", command(svcs["producer"])), cwd=stack.home("producer"),
            env=stack.env("producer"), capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        report = f"{producer.stdout}\n{producer.stderr}\n{stack.logs()}"
        assert producer.returncode == 0, report
        assert re.search(r"^\s*MATCH$", producer.stdout, re.MULTILINE), report

        took = stack.stop(["worker", "beat"])
        for name, seconds in took.items():
            grace = duration(svcs[name]["stop_grace_period"])
            assert stack.procs[name].poll() is not None, f"{name} ignored SIGTERM:\n{stack.logs()}"
            assert seconds <= grace, f"{name} took {seconds:.1f} s to stop, its grace period is {grace:g} s"
        assert stack.procs["worker"].returncode == 0, stack.logs()
        assert not stack.healthy("worker")  # the readiness file went with the worker
        stack.stop(["collector"])
        assert stack.procs["collector"].poll() is not None, stack.logs()
    finally:
        stack.kill_all()
        # Only this test's keys, once every process has exited: its queues, their bindings,
        # and results it created (the producer forgets its own; none should be left).
        mine = set(client.scan_iter(match=f"*{queue}*"))
        mine |= set(client.scan_iter(match="celery-task-meta-*")) - results_before
        if mine:
            client.delete(*mine)
        client.close()
