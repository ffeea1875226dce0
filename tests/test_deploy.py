"""Tests for the deployment files (Dockerfile, .dockerignore, deploy/k8s/*.yaml, docs/deploy.md): their text in,
cross-checks out, since no image is built and no cluster runs here: the ports agree (EXPOSE, HEALTHCHECK, the
container port, the probes, the Service), the image runs as a non-root user, both command lines are ones the real
`modelroute serve` command accepts, the policy path is the ConfigMap's mount and the policy in it compiles, the
gateway keys file is the Secret's mount and loads, the provider keys are the bundled catalog's variables from a
Secret, --workers matches the CPU request and comes with --redis pointing at the Redis Service, the PDB and
Services select the pods, the grace period covers a graceful shutdown, and docs/deploy.md shows every manifest as
it is."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from engine.cli.serve import serve

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"


# ---- reading the files ----------------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        name, _, args = whole.partition(" ")
        out.append((name.upper(), args.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [args for n, args in dockerfile() if n == name]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list; other forms fail the test (a shell would stand between)."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(kind, name)
    assert len(found) == 1, f"one {kind} {name or ''} in deploy/k8s"
    return found[0]


def gateway() -> dict[str, Any]:
    return one("Deployment", "modelroute")


def container() -> dict[str, Any]:
    (c,) = gateway()["spec"]["template"]["spec"]["containers"]
    return c


def parse_serve(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The options `modelroute serve` parses from `argv` (click's own parser and types, nothing run); fails on a
    command line it would refuse."""
    for var in ("MODELROUTE_REDIS_URL", "MODELROUTE_WORKERS", "MODELROUTE_WARMUP"):
        monkeypatch.delenv(var, raising=False)
    try:
        with serve.make_context("modelroute serve", list(argv)) as ctx:
            return dict(ctx.params)
    except click.ClickException as exc:
        pytest.fail(f"`modelroute serve {shlex.join(argv)}` is refused: {exc.format_message()}")


def script_name() -> str:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    (name,) = [n for n, target in scripts.items() if target == "engine.cli:main"]
    return name


def image_env() -> dict[str, str]:
    """The variables the image's ENV instructions set."""
    return dict(item.split("=", 1) for args in instruction("ENV") for item in shlex.split(args))


def image_command() -> list[str]:
    """The command the container runs: ENTRYPOINT then CMD; a `/bin/sh -c "exec ..."` entry point is read as that
    shell would run it with the image's ENV (it must `exec`, so modelroute stays PID 1 and gets the signals)."""
    (entry,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    argv, args = exec_form(entry), exec_form(cmd)
    if argv[:2] != ["/bin/sh", "-c"]:
        return argv + args
    words = shlex.split(argv[2])
    assert words[0] == "exec", "the shell replaces itself with modelroute"
    env = image_env()
    out: list[str] = []
    for word in words[1:]:
        if word == "$@":
            out += args
        else:
            out.append(re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], word))
    return out


def pod_command() -> list[str]:
    c = container()
    return [*c["command"], *c["args"]]


def serve_args(command: list[str]) -> list[str]:
    assert command[:2] == [script_name(), "serve"], command
    return command[2:]


def port_of(value: int | str) -> int:
    """A container port given by number or by the container's port name."""
    if isinstance(value, int):
        return value
    (port,) = [p["containerPort"] for p in container()["ports"] if p["name"] == value]
    return port


def mount_of(path: str, volume_kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume mount holding `path` and its volume, which must be of `volume_kind` (configMap, secret)."""
    pure = PurePosixPath(path)
    mounts = [m for m in container()["volumeMounts"] if pure == PurePosixPath(m["mountPath"])]
    mounts = mounts or [m for m in container()["volumeMounts"] if PurePosixPath(m["mountPath"]) in pure.parents]
    assert len(mounts) == 1, f"one volume mounted at {path} or above it"
    volumes = {v["name"]: v for v in gateway()["spec"]["template"]["spec"]["volumes"]}
    volume = volumes[mounts[0]["name"]]
    assert volume_kind in volume, f"{path} comes from a {volume_kind} volume"
    return mounts[0], volume


# ---- the image ----------------------------------------------------------------------------------------------
def test_the_image_is_slim_python_and_runs_as_a_non_root_user() -> None:
    (base,) = instruction("FROM")
    assert re.fullmatch(r"python:3\.1\d+-slim", base), base
    user = instruction("USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    run = " ".join(instruction("RUN"))
    assert re.search(rf"useradd .*--uid {re.escape(user)}\b", run), "the USER is created with that uid"
    security = gateway()["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == user


def test_the_image_installs_the_project_from_what_it_copies_and_dockerignore_keeps() -> None:
    run = " ".join(instruction("RUN"))
    found = re.search(r"pip install \"?\.\[([\w,]+)\]\"?", run)
    assert found, "pip install of the project with its extras"
    extras = set(found.group(1).split(","))
    assert {"serve", "tokens", "otel", "semantic"} <= extras, "gateway, tokens.estimator, OTEL_* tracing, like tasks"
    assert extras <= set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    copied = {exec_form(a)[0] if a.startswith("[") else a.split()[0] for a in instruction("COPY")}
    copied |= {name for a in instruction("COPY") for name in a.split()[:-1]}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "setup.py", project["project"]["readme"], "engine", "providers"}
    needed |= set(project["tool"]["setuptools"]["package-dir"].values())  # grammar/, policies/
    assert needed <= copied, f"not copied: {needed - copied}"
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    ignored = {line.rstrip("/") for line in lines if line and not line.startswith("#")}
    assert not (needed & ignored), f".dockerignore drops {needed & ignored}"
    assert {"tests", ".git", "bench"} <= ignored


def test_the_image_command_is_one_serve_accepts_on_all_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    params = parse_serve(serve_args(image_command()), monkeypatch)
    assert params["host"] == "0.0.0.0"
    (exposed,) = instruction("EXPOSE")
    assert params["port"] == int(exposed.split("/")[0])
    (policy,) = params["policy_args"]
    assert PurePosixPath(policy).is_relative_to("/etc/modelroute")
    assert "/etc/modelroute" in " ".join(instruction("RUN")), "the image puts the bundled policy there"
    assert params["workers"] == 1 and params["redis_url"] is None, "one process unless given a Redis"


def test_the_healthcheck_asks_healthz_on_the_exposed_port() -> None:
    (check,) = instruction("HEALTHCHECK")
    (exposed,) = instruction("EXPOSE")
    options, _, command = check.partition("CMD ")
    assert command, "HEALTHCHECK CMD ..."
    text = " ".join(exec_form(command)) if command.startswith("[") else command
    assert "127.0.0.1:' + os.environ['MODELROUTE_PORT'] + '/healthz" in text, "the port serve is given (image_command)"
    assert image_env()["MODELROUTE_PORT"] == exposed.split("/")[0]
    assert "--interval=" in options and "--timeout=" in options


# ---- the manifests ------------------------------------------------------------------------------------------
def test_every_manifest_parses_and_names_what_it_is() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]


def test_ports_agree_from_the_image_to_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    (exposed,) = instruction("EXPOSE")
    port = int(exposed.split("/")[0])
    params = parse_serve(serve_args(pod_command()), monkeypatch)
    assert params["host"] == "0.0.0.0" and params["port"] == port
    c = container()
    assert [p["containerPort"] for p in c["ports"]] == [port]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and port_of(get["port"]) == port, probe
    service = one("Service", "modelroute")
    assert [port_of(p["targetPort"]) for p in service["spec"]["ports"]] == [port]


def test_the_policy_is_the_configmap_volume_and_is_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    params = parse_serve(serve_args(pod_command()), monkeypatch)
    (policy,) = params["policy_args"]
    assert params["watch"] is True
    mount, volume = mount_of(policy, "configMap")
    configmap = one("ConfigMap", volume["configMap"]["name"])
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    relative = PurePosixPath(policy).relative_to(mount["mountPath"])
    entry = "main.route" if relative == PurePosixPath(".") else str(relative)
    assert entry in configmap["data"], f"the ConfigMap has {entry}"


def test_the_configmap_policy_compiles_with_the_bundled_catalog(tmp_path: Path) -> None:
    from engine import Engine

    for name, text in one("ConfigMap", "modelroute-policy")["data"].items():
        (tmp_path / name).write_text(text)
    engine = Engine.load(tmp_path)
    assert engine.version
    engine.stop()


def test_the_gateway_keys_file_is_the_secret_volume_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from providers.gateway.keys import KeyRing

    params = parse_serve(serve_args(pod_command()), monkeypatch)
    keys = PurePosixPath(str(params["keys_file"]))
    mount, volume = mount_of(str(keys), "secret")
    assert "subPath" not in mount and PurePosixPath(mount["mountPath"]) == keys.parent
    secret = one("Secret", volume["secret"]["secretName"])
    assert keys.name in secret["stringData"]
    (tmp_path / keys.name).write_text(secret["stringData"][keys.name])
    assert len(KeyRing.load(tmp_path / keys.name)) >= 1


def test_provider_keys_are_the_bundled_catalogs_variables_from_a_secret() -> None:
    catalog = yaml.safe_load((REPO / "providers" / "catalog" / "catalog.yaml").read_text())
    wanted = {p["api_key_env"] for p in catalog["providers"].values() if p.get("api_key_env")}
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container()["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(from_secret) == wanted
    assert all(ref["key"] == name for name, ref in from_secret.items())
    (secret_name,) = {ref["name"] for ref in from_secret.values()}
    assert set(one("Secret", secret_name)["stringData"]) == wanted


def test_workers_match_the_cpu_request_and_share_the_redis_service(monkeypatch: pytest.MonkeyPatch) -> None:
    params = parse_serve(serve_args(pod_command()), monkeypatch)
    cpu = container()["resources"]["requests"]["cpu"]
    cores = int(cpu[:-1]) / 1000 if str(cpu).endswith("m") else float(cpu)
    assert params["workers"] == max(1, int(cores))
    assert params["workers"] == 1 or params["redis_url"], "--workers > 1 needs --redis"
    url = urlsplit(params["redis_url"])
    redis = one("Service", url.hostname)
    assert (url.port or 6379) in [p["port"] for p in redis["spec"]["ports"]]
    pods = one("Deployment", url.hostname)["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["selector"].items() <= pods.items()
    assert "memory" in container()["resources"]["limits"]


def test_services_and_the_disruption_budget_select_the_gateway_pods() -> None:
    spec = gateway()["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert one("Service", "modelroute")["spec"]["selector"].items() <= labels.items()
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < spec["replicas"]


def test_the_grace_period_covers_a_graceful_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    from providers.gateway.workers import KILL_AFTER_S

    params = parse_serve(serve_args(pod_command()), monkeypatch)
    pause = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    needed = float(pause[1]) + params["graceful_timeout"] + KILL_AFTER_S
    assert gateway()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed


def test_deploy_md_shows_every_manifest_as_it_is_and_the_readme_links_it() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text()
    for path in sorted(K8S.glob("*.yaml")):
        assert f"deploy/k8s/{path.name}" in doc, path.name
        assert path.read_text().strip() in doc, f"docs/deploy.md shows {path.name} as it is"
    assert "docs/deploy.md" in (REPO / "README.md").read_text()
