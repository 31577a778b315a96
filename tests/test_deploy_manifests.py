"""The deployment files are valid and consistent with the service: every Kubernetes manifest against the Kubernetes
JSON schemas (kubernetes-validate, strict: unknown fields fail), docker-compose.yml against the Compose
Specification (compose-spec), the Dockerfile's contract, the nginx front of deploy/nginx/ (parsed here, and checked by
Debian's nginx itself), and the cross-references between them (ports, probe paths, selectors, secret keys, ingress
and front routes, the one origin that roots and signed URLs name, the settings the service would build from them).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from compose_spec import PyOptions

from app.cli import main as cli
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
FRONT = ROOT / "deploy" / "nginx" / "mlflow.conf.template"
STANDALONE = ROOT / "deploy" / "nginx" / "standalone.conf.template"
# The oldest Kubernetes minor still commonly run, and the newest the schemas know.
K8S_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
ARTIFACT_PREFIXES = ["/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/"]
PORT = 5000


# ---------------------------------------------------------------------------------------------------- Kubernetes
def k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.y*ml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    """Manifests by kind (one of each kind here)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for _, doc in k8s_documents():
        assert doc["kind"] not in by_kind, f"two {doc['kind']} manifests"
        by_kind[doc["kind"]] = doc
    return by_kind


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name,doc", [pytest.param(n, d, id=f"{n}:{d['kind']}") for n, d in k8s_documents()])
def test_manifest_matches_the_kubernetes_schema(name: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_every_expected_kind_is_there(k8s: dict[str, dict[str, Any]]) -> None:
    assert set(k8s) == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "ServiceAccount",
        "NetworkPolicy",
    }
    assert k8s["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert k8s["PodDisruptionBudget"]["apiVersion"] == "policy/v1"
    assert k8s["Ingress"]["apiVersion"] == "networking.k8s.io/v1"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0]
    assert [i["name"] for i in kustomization["images"]] == [image]


def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def container_port(k8s: dict[str, dict[str, Any]], port: int | str) -> int:
    """A probe's or Service's target port, by number or by name, as the container's port number."""
    ports = container(k8s)["ports"]
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports]
        return port
    return int(next(p["containerPort"] for p in ports if p.get("name") == port))


def test_probes_hit_health_and_ready_on_the_served_port(k8s: dict[str, dict[str, Any]]) -> None:
    c = container(k8s)
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"  # the store answers
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"  # the process answers; never touches storage
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    served = int(pod_env(k8s).get("ARTIFACT_PROXY_PORT", PORT))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container_port(k8s, c[probe]["httpGet"]["port"]) == served
    assert served == PORT == dockerfile_exposed_port()


def test_pod_runs_as_non_root_with_limits(k8s: dict[str, dict[str, Any]]) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    c = container(k8s)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user() != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in [m["mountPath"] for m in c["volumeMounts"]]  # metrics and temp files need somewhere
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])


def test_termination_grace_covers_the_drain(k8s: dict[str, dict[str, Any]]) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    grace = int(k8s["ConfigMap"]["data"].get("ARTIFACT_PROXY_SHUTDOWN_GRACE", 30))
    pre_stop = container(k8s)["lifecycle"]["preStop"]["exec"]["command"]
    pause = int(pre_stop[-1]) if pre_stop[0] == "sleep" else 0
    assert pod["terminationGracePeriodSeconds"] > grace + pause


def pod_env(k8s: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The environment the container gets: ConfigMap (envFrom), then env (literal values and Secret keys)."""
    c = container(k8s)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert source["configMapRef"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
        env.update(k8s["ConfigMap"]["data"])
    secret = k8s["Secret"]
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[var["name"]] = secret["stringData"][ref["key"]]
    return env


def test_secrets_come_from_the_secret(k8s: dict[str, dict[str, Any]]) -> None:
    from_secret = {v["name"] for v in container(k8s)["env"] if "valueFrom" in v}
    assert {"ARTIFACT_PROXY_SIGNING_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= from_secret
    assert not {"ARTIFACT_PROXY_SIGNING_SECRET", "AWS_SECRET_ACCESS_KEY"} & set(k8s["ConfigMap"]["data"])


def test_the_service_accepts_the_pod_environment(
    k8s: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith(("ARTIFACT_PROXY_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    for name, value in pod_env(k8s).items():
        monkeypatch.setenv(name, value)
    # As shipped, the example secret stops the pods: applied unchanged, they must not sign with a public value.
    with pytest.raises(ValueError, match="placeholder"):
        Settings()
    monkeypatch.setenv("ARTIFACT_PROXY_SIGNING_SECRET", "9f3c2a7be1d04c56a8e2f1b3c4d5e6f7")  # as `openssl rand -hex 16`
    settings = Settings()  # raises on any other bad value
    assert settings.artifacts_destination.startswith(("s3://", "gs://", "wasbs://", "/"))
    assert settings.port == PORT


def test_pods_run_as_their_service_account_behind_a_network_policy(k8s: dict[str, dict[str, Any]]) -> None:
    pod = k8s["Deployment"]["spec"]["template"]
    account = k8s["ServiceAccount"]
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False  # the service never calls the Kubernetes API
    policy = k8s["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    opened = [port["port"] for rule in policy["ingress"] for port in rule["ports"]]
    assert [container_port(k8s, port) for port in opened] == [PORT]


def test_the_prometheus_operator_overlay_scrapes_the_service(k8s: dict[str, dict[str, Any]]) -> None:
    overlay = K8S / "prometheus-operator"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["..", "servicemonitor.yaml"]
    assert kustomization["namespace"] == yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    monitor = yaml.safe_load((overlay / "servicemonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    service = k8s["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [port["name"] for port in service["spec"]["ports"]] and endpoint["path"] == "/metrics"


def test_service_hpa_and_pdb_select_the_pods(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    service = k8s["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [container_port(k8s, p["targetPort"]) for p in service["spec"]["ports"]] == [PORT]
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] >= hpa["minReplicas"]
    assert k8s["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"]
    assert "resources" in container(k8s) and "cpu" in container(k8s)["resources"]["requests"]  # HPA needs requests


def test_ingress_routes_both_artifact_prefixes_to_the_proxy(k8s: dict[str, dict[str, Any]]) -> None:
    ingress, service = k8s["Ingress"], k8s["Service"]
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    routes: dict[str, tuple[str, int]] = {}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            port = backend["port"].get("number") or service_ports[backend["port"]["name"]]
            routes[path["path"]] = (backend["name"], port)
            assert path["pathType"] == "Prefix"
    for prefix in ARTIFACT_PREFIXES:
        assert routes.get(prefix) == (service["metadata"]["name"], PORT), prefix
    tracking = routes["/"]
    assert tracking[0] != service["metadata"]["name"]  # everything else: the tracking server


def test_signed_urls_name_the_ingress_origin(k8s: dict[str, dict[str, Any]]) -> None:
    # One origin: the URLs the service signs (local destinations) point at the host the Ingress serves, over TLS.
    [host] = [rule["host"] for rule in k8s["Ingress"]["spec"]["rules"]]
    assert host in k8s["Ingress"]["spec"]["tls"][0]["hosts"]
    assert k8s["ConfigMap"]["data"]["ARTIFACT_PROXY_PUBLIC_URL"] == f"https://{host}"
    # The tracking server (not part of the kustomization) must hand out roots on it too, as the Ingress says.
    assert (
        f"--default-artifact-root https://{host}/api/2.0/mlflow-artifacts/artifacts/"
        in (K8S / "ingress.yaml").read_text()
    )


def test_ingress_streams_large_bodies(k8s: dict[str, dict[str, Any]]) -> None:
    annotations = k8s["Ingress"]["metadata"]["annotations"]
    nginx = "nginx.ingress.kubernetes.io/"
    assert annotations[nginx + "proxy-body-size"] == "0"
    assert annotations[nginx + "proxy-request-buffering"] == "off"
    assert annotations[nginx + "proxy-buffering"] == "off"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[nginx + timeout]) >= 120  # MLflow's client waits 120 s after the last byte
    assert annotations[nginx + "proxy-http-version"] == "1.1"  # chunked uploads streamed, kept-alive upstreams
    # Kept-alive connections from the controller (its upstream-keepalive-timeout: 60 s) close on its side first.
    assert int(k8s["ConfigMap"]["data"]["ARTIFACT_PROXY_KEEPALIVE_TIMEOUT"]) > 60


# ---------------------------------------------------------------------------------------------------- nginx front
Directive = tuple[str, list[str], list[Any] | None]  # name, arguments, the block's directives (None: no block)


def nginx_directives(text: str) -> list[Directive]:
    """nginx's configuration syntax, enough for these files: directives, arguments (quotes removed), blocks."""
    text = re.sub(r"#[^\n]*", "", text)
    # A word may hold ${name} (nginx's own syntax for a variable, and the templates' placeholders).
    tokens = re.findall(r'"[^"]*"|\'[^\']*\'|[{};]|(?:\$\{\w+\}|\$(?!\{)|[^\s{};"\'$])+', text)

    def block(at: int) -> tuple[list[Directive], int]:
        directives: list[Directive] = []
        words: list[str] = []
        while at < len(tokens):
            token = tokens[at]
            if token == ";":
                directives.append((words[0], words[1:], None))
                words = []
            elif token == "{":
                children, at = block(at + 1)
                directives.append((words[0], words[1:], children))
                words = []
            elif token == "}":
                assert not words, f"unterminated directive {words}"
                return directives, at
            else:
                words.append(token.strip("\"'"))
            at += 1
        assert not words, f"unterminated directive {words}"
        return directives, at

    return block(0)[0]


def values(directives: list[Directive], name: str) -> list[list[str]]:
    return [args for directive, args, _ in directives if directive == name]


def one(directives: list[Directive], name: str) -> list[str]:
    [args] = values(directives, name)
    return args


def blocks(directives: list[Directive], name: str) -> dict[str, list[Directive]]:
    """The blocks named `name` (upstream, location, server), by their arguments."""
    return {" ".join(args): children for directive, args, children in directives if directive == name and children}


@pytest.fixture(scope="module")
def front() -> list[Directive]:
    return nginx_directives(FRONT.read_text())


def front_server(front: list[Directive]) -> list[Directive]:
    [server] = blocks(front, "server").values()
    return server


def test_front_routes_both_artifact_prefixes_to_the_proxy_and_the_rest_to_mlflow(front: list[Directive]) -> None:
    upstreams = {name: one(body, "server")[0] for name, body in blocks(front, "upstream").items()}
    locations = blocks(front_server(front), "location")
    routes = {path: one(body, "proxy_pass")[0] for path, body in locations.items()}
    # Prefix locations only (a regex one could take a prefix away), and exactly these: the service's two API prefixes,
    # the URLs it signs living under them, and the tracking server for everything else.
    assert set(routes) == {*ARTIFACT_PREFIXES, "/"}
    for prefix in ARTIFACT_PREFIXES:
        assert routes[prefix].startswith("http://")
        # No URI part after the upstream: the path goes through as the client sent it, percent-encoding included.
        assert upstreams[routes[prefix].removeprefix("http://")] == "${ARTIFACTS_UPSTREAM}", prefix
    assert upstreams[routes["/"].removeprefix("http://")] == "${MLFLOW_UPSTREAM}"
    assert one(front_server(front), "listen") == ["${FRONT_LISTEN}"]


def test_front_streams_large_bodies_both_ways(front: list[Directive]) -> None:
    server = front_server(front)
    assert one(server, "client_max_body_size") == ["0"]  # no cap (artifact-proxy's --max-upload-size is the place)
    assert one(server, "proxy_request_buffering") == ["off"]  # uploads streamed, not spooled to the front's disk
    assert one(server, "proxy_buffering") == ["off"]  # downloads too
    assert one(server, "proxy_http_version") == ["1.1"]
    for timeout in ("proxy_read_timeout", "proxy_send_timeout", "client_body_timeout", "send_timeout"):
        assert int(one(server, timeout)[0].removesuffix("s")) >= 120, timeout  # MLflow's client waits 120 s
    # The locations inherit all of it: none turns buffering back on or sets a limit of its own.
    for body in blocks(server, "location").values():
        assert {directive for directive, _, _ in body} == {"proxy_pass"}
    # The Host the client used reaches both servers (their allowed-hosts checks, URLs built from it).
    assert ["Host", "$http_host"] in values(server, "proxy_set_header")
    assert ["X-Forwarded-For", "$proxy_add_x_forwarded_for"] in values(server, "proxy_set_header")
    for upstream in blocks(front, "upstream").values():
        # Idle upstream connections close before the servers' own 5 s keep-alive timeout does.
        assert int(one(upstream, "keepalive_timeout")[0].removesuffix("s")) < 5


def render(template: Path, values: dict[str, str]) -> str:
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    assert not re.findall(r"\$\{\w+\}", text), f"{template.name} has variables without values"
    return text


def test_nginx_accepts_the_front(tmp_path: Path) -> None:
    """Debian's nginx (what `make stack` and the browser test run) reads the front as the stack renders it."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed: `make test` installs it (deploy/install-debian-packages.sh)")
    conf = {
        "FRONT_LISTEN": "127.0.0.1:18999",
        "MLFLOW_UPSTREAM": "127.0.0.1:1",
        "ARTIFACTS_UPSTREAM": "127.0.0.1:2",
    }
    (tmp_path / "mlflow.conf").write_text(render(FRONT, conf))
    (tmp_path / "nginx.conf").write_text(render(STANDALONE, {"FRONT_DIR": str(tmp_path)}))
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_stack_and_compose_run_the_same_front() -> None:
    assert "deploy/nginx/mlflow.conf.template" in (ROOT / "deploy" / "stack.sh").read_text()
    assert "./deploy/nginx/mlflow.conf.template" in COMPOSE.read_text()


# ---------------------------------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def build_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    return {arg.split("=", 1)[0]: arg.split("=", 1)[1].strip('"') for op, arg in stage if op == "ARG" and "=" in arg}


def dockerfile_user() -> int:
    stage = final_stage()
    user = [arg for op, arg in stage if op == "USER"][-1].split(":")[0]
    return int(re.sub(r"\$\{(\w+)\}", lambda m: build_args(stage)[m.group(1)], user))


def dockerfile_exposed_port() -> int:
    return int([arg for op, arg in final_stage() if op == "EXPOSE"][-1].split("/")[0])


def test_dockerfile_is_multi_stage_with_extras() -> None:
    instructions = dockerfile_instructions()
    stages = [arg for op, arg in instructions if op == "FROM"]
    assert len(stages) >= 2 and all(" AS " in s.upper() for s in stages)
    assert "EXTRAS" in build_args(instructions)
    assert any(op == "RUN" and "${EXTRAS" in arg for op, arg in instructions)
    assert any(op == "COPY" and arg.startswith("--from=build") for op, arg in final_stage())


def test_dockerfile_installs_every_backend_at_the_tested_versions() -> None:
    instructions = dockerfile_instructions()
    assert build_args(instructions)["EXTRAS"] == "all"
    installs = [arg for op, arg in instructions if op == "RUN" and "${EXTRAS" in arg]
    assert installs and all("-c constraints.txt" in arg for arg in installs)
    assert any(op == "COPY" and "constraints.txt" in arg.split()[:-1] for op, arg in instructions)


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "image" in service and "build" not in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name


def test_dockerfile_runs_the_cli_unprivileged_with_a_healthcheck() -> None:
    stage = final_stage()
    assert dockerfile_user() >= 1000
    entrypoint = json.loads([arg for op, arg in stage if op == "ENTRYPOINT"][-1])
    assert entrypoint == ["artifact-proxy", "server", "--host", "0.0.0.0"]
    healthcheck = [arg for op, arg in stage if op == "HEALTHCHECK"][-1]
    assert "/health" in healthcheck and "ARTIFACT_PROXY_PORT" in healthcheck
    # The entrypoint is a real command of this project, with these flags.
    result = CliRunner().invoke(cli, ["server", "--help"])
    assert result.exit_code == 0 and "--host" in result.output and "--artifacts-destination" in result.output


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"  # allow-list: venvs, node_modules, mlartifacts, secrets never enter the context
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = [
        src
        for op, arg in dockerfile_instructions()
        if op == "COPY" and not arg.startswith("--from")
        for src in arg.split()[:-1]
    ]
    assert copied and {c.rstrip("/").removeprefix("./") for c in copied} <= allowed
    for path in allowed:
        assert (ROOT / path).exists(), path


# ---------------------------------------------------------------------------------------------------- Compose
def interpolate(text: str) -> str:
    """Compose's variable substitution with every variable unset: ${VAR:-default} -> default, $$ -> $."""

    def value(match: re.Match[str]) -> str:
        assert not match.group(2) or not match.group(2).startswith(("?", ":?")), f"required variable {match.group(1)}"
        return match.group(3) or ""

    text = text.replace("$$", "\0")
    text = re.sub(r"\$\{(\w+)((?::?[-?])([^}]*))?\}", value, text)
    return text.replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed = PyOptions(apply_merge=True).from_yaml(interpolate(COMPOSE.read_text()))  # strict: unknown keys fail
    parsed.validate()  # networks, volumes, configs and secrets that services use are defined
    parsed.to_spec()  # and the typed model of the Compose Specification accepts it too
    return dict(parsed.to_dict())


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_compose_has_the_whole_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "seaweedfs", "create-bucket", "artifact-proxy", "front", "mlflow", "client"} <= set(services)


FRONT_ORIGIN = "http://localhost:5000"  # what the host's browser opens, and what every root and signed URL names


def test_compose_tracking_server_hands_out_roots_on_the_front(compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    args = command_of(mlflow)
    assert args[:2] == ["mlflow", "server"]
    assert "--no-serve-artifacts" in args
    assert flag(args, "--backend-store-uri").startswith(("postgresql://", "postgresql+psycopg://"))
    assert "@postgres:5432/" in flag(args, "--backend-store-uri")
    assert flag(args, "--default-artifact-root") == f"{FRONT_ORIGIN}/api/2.0/mlflow-artifacts/artifacts/experiments"
    # In the front's network namespace, where localhost:5000 is the front (for its own reads of the root, as for the
    # host's browser), and listening where the front's upstream is.
    assert mlflow["network_mode"] == "service:front"
    front_env = compose["services"]["front"]["environment"]
    assert front_env["MLFLOW_UPSTREAM"] == f"127.0.0.1:{flag(args, '--port')}"
    assert "localhost:*" in flag(args, "--allowed-hosts").split(",")  # the Host header the front passes on
    assert "ports" not in mlflow  # reached through the front only


def test_compose_front_serves_the_shared_config_on_the_origin(compose: dict[str, Any]) -> None:
    front = compose["services"]["front"]
    image, tag = front["image"].split(":")
    assert image == "nginx" and tag[0].isdigit()  # pinned to a release
    [config] = front["configs"]
    assert compose["configs"][config["source"]]["file"] == "./deploy/nginx/mlflow.conf.template"
    # The image renders /etc/nginx/templates/X.template into conf.d/X (default.conf: replacing its default site).
    assert config["target"] == "/etc/nginx/templates/default.conf.template"
    variables = set(re.findall(r"\$\{(\w+)\}", FRONT.read_text()))
    assert variables == set(front["environment"]), "every variable of the template, and only those, is set"
    assert front["environment"]["ARTIFACTS_UPSTREAM"] == f"artifact-proxy:{PORT}"
    # Published on the port it listens on: the origin in the browser is the origin inside the network namespace.
    listen = front["environment"]["FRONT_LISTEN"]
    assert front["ports"] == [f"{listen}:{listen}"] and FRONT_ORIGIN.endswith(f":{listen}")
    assert "ports" not in compose["services"]["artifact-proxy"]  # the artifact API is reached through the front
    proxy_env = compose["services"]["artifact-proxy"]["environment"]
    assert proxy_env["ARTIFACT_PROXY_PUBLIC_URL"] == FRONT_ORIGIN  # URLs it signs are on the front's origin
    assert Settings.split_list(proxy_env["ARTIFACT_PROXY_TRUSTED_PROXIES"])  # and it believes the front's headers


def test_compose_artifact_proxy_serves_the_created_bucket(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    proxy = services["artifact-proxy"]
    assert (ROOT / proxy["build"]["context"] / proxy["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert "s3" in proxy["build"]["args"]["EXTRAS"].split(",")
    destination = flag(command_of(proxy), "--artifacts-destination")
    bucket = destination.removeprefix("s3://").split("/")[0]
    assert f"s3://{bucket}" in " ".join(command_of(services["create-bucket"]))
    env = proxy["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert env["AWS_ACCESS_KEY_ID"] == services["create-bucket"]["environment"]["AWS_ACCESS_KEY_ID"]
    s3_config = json.loads(compose["configs"]["seaweedfs-s3"]["content"])
    credentials = s3_config["identities"][0]["credentials"][0]
    assert credentials == {"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}
    for name in [n for n in os.environ if n.startswith(("ARTIFACT_PROXY_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if value not in (None, ""):  # Compose passes an empty value as empty, which settings read as unset
            monkeypatch.setenv(name, str(value))
    # No public default: unset, each container makes a random secret at start (app/server_cli.py).
    assert env["ARTIFACT_PROXY_SIGNING_SECRET"] in ("", None) and Settings().signing_secret == ""
    assert any("/ready" in part or "/health" in part for part in proxy["healthcheck"]["test"])


def test_compose_startup_order_uses_health_and_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def condition(service: str, dependency: str) -> str:
        return str(services[service]["depends_on"][dependency]["condition"])

    assert condition("create-bucket", "seaweedfs") == "service_healthy"
    assert condition("artifact-proxy", "create-bucket") == "service_completed_successfully"
    assert condition("front", "artifact-proxy") == "service_healthy"  # nginx resolves its upstream's name at start
    assert compose["services"]["front"]["depends_on"]["artifact-proxy"]["restart"] is True
    assert condition("mlflow", "postgres") == "service_healthy"
    assert condition("mlflow", "front") == "service_healthy"
    assert condition("client", "mlflow") == "service_healthy"
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s missing healthcheck"


def test_compose_client_runs_the_demo_against_the_tracking_server(compose: dict[str, Any]) -> None:
    client = compose["services"]["client"]
    assert client["environment"]["MLFLOW_TRACKING_URI"] == FRONT_ORIGIN  # as a user on the host would
    assert client["network_mode"] == "service:front"
    root = flag(command_of(compose["services"]["mlflow"]), "--default-artifact-root")
    assert client["environment"]["EXPECTED_ARTIFACT_ROOT"] == root
    for volume in client.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
        if source.startswith("."):
            assert (ROOT / source).exists(), source
    script = command_of(client)[-1]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in client["volumes"] if isinstance(v, str)}
    assert (ROOT / mounted[script]).resolve() == ROOT / "deploy" / "mlflow_client_demo.py"
