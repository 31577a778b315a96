"""MLflow's web UI in a real browser, on one origin with this service: the proof of deploy/nginx/ (issue 16).

MLflow 3.18's UI fetches previews of a run's artifacts from the browser itself, from the artifact service its root
names (`<root's origin>/api/2.0/mlflow-artifacts/presigned/...`, then the signed URL or `.../artifacts/...`), and
refuses a service on another origin. 3.17's asks the tracking server (`/get-artifact`), which reads from us. So each
UI version gets the deployment docs/deployment.md describes: Debian's nginx with deploy/nginx/mlflow.conf.template
in front of that version's tracking server (`--no-serve-artifacts --default-artifact-root http://FRONT/api/2.0/
mlflow-artifacts/artifacts/experiments`) and of artifact-proxy over a local directory (`ARTIFACT_PROXY_PUBLIC_URL=
http://FRONT`, so the URLs it signs are on the front's origin too).

The real MLflow client of the same version logs a text, a PNG and a CSV artifact through the front. Headless
Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium) opens the run's artifacts tab through the
front, and the test checks the DOM: the tree lists the three files, the text preview shows the text we stored, the
PNG's <img> has loaded with the PNG's own size, the CSV is a table of its cells, and no preview shows an error; the
access log of artifact-proxy shows the requests each UI makes. Each runs with presigned downloads on and off
(ARTIFACT_PROXY_ENABLE_PRESIGNED_DOWNLOAD; the service restarts on the same port between the two). A screenshot of
every preview is saved in the test's temporary directory. A last test shows what the front is for: 3.18's UI refuses
a run whose root names the service's own port.

The 3.17.2 UI comes from `.venv-mlflow-prev` (deploy/setup-mlflow-prev-venv.sh), 3.18.0's from `.venv-mlflow`. A
missing browser, driver, nginx or MLflow fails these tests (`make test` installs them all); they are never skipped.
Waits are WebDriverWait on DOM conditions, with generous deadlines for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.servers import free_port, http_ok, start_process, stop_process, wait_until
from tests.utils.mlflow_clients import IN_PROCESS_VERSION, WORKER_VERSION
from tests.utils.proxy import Proxy, running_proxy

ROOT = Path(__file__).resolve().parents[1]
NGINX_DIR = ROOT / "deploy" / "nginx"
MLFLOW_VENVS = {  # the UI version -> the venv whose `mlflow server` serves it
    IN_PROCESS_VERSION: Path(os.environ.get("MLFLOW_PREV_VENV", ROOT / ".venv-mlflow-prev")),
    WORKER_VERSION: Path(os.environ.get("MLFLOW_VENV", ROOT / ".venv-mlflow")),
}
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# Deadlines, not delays: the UI loads megabytes of JavaScript, and a loaded 2-core machine is slow.
PATIENCE = 90.0
SERVER_START = 120.0

PNG_SIZE = (37, 23)  # an unusual size, so a natural size equal to it is this image and no other
CSV = "alpha,beta\n12345,67890\n"
ARTIFACTS = ("notes.txt", "plot.png", "table.csv")
PREVIEW_ERROR = "Loading artifact failed"  # the title of both UIs' preview error


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG of the given size: a gradient, so that it is not blank in the screenshots."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# Run by each version's own `mlflow`: logs the directory's files in a new run of a new experiment, prints its ids.
LOG_RUN = """
import json, sys
import mlflow

name, directory, location = sys.argv[1], sys.argv[2], sys.argv[3] or None
experiment_id = mlflow.create_experiment(name, artifact_location=location)
with mlflow.start_run(experiment_id=experiment_id) as run:
    mlflow.log_artifacts(directory)
print(json.dumps({"experiment_id": experiment_id, "run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri,
                  "version": mlflow.__version__}))
"""


def program(name: str, *candidates: str) -> str:
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if found:
            return found
    pytest.fail(f"{name} is not installed: `make test` installs it (deploy/install-debian-packages.sh)", pytrace=False)


def mlflow_program(version: str, name: str) -> str:
    path = MLFLOW_VENVS[version] / "bin" / name
    if not path.exists():
        script = "setup-mlflow-prev-venv.sh" if version == IN_PROCESS_VERSION else "setup-mlflow-venv.sh"
        pytest.fail(f"{path} is missing: `bash deploy/{script}` creates it (`make test` does)", pytrace=False)
    return str(path)


def render(template: Path, values: dict[str, str]) -> str:
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    left = sorted(set(re.findall(r"\$\{\w+\}", text)))
    assert not left, f"{template.name}: no value for {left}"
    return text


@dataclass
class Origin:
    """One MLflow deployment on one origin: the nginx front, one MLflow version's tracking server, artifact-proxy."""

    version: str
    url: str  # the front: http://127.0.0.1:PORT
    work: Path
    proxy_port: int
    destination: Path
    runs: dict[str, dict[str, str]] = field(default_factory=dict)
    proxy: Proxy | None = None
    presigned: bool | None = None
    _proxy_stack: ExitStack = field(default_factory=ExitStack)

    def serve(self, presigned: bool) -> Proxy:
        """artifact-proxy with presigned downloads on or off, started anew on the front's upstream port if needed."""
        if self.proxy is None or self.presigned != presigned:
            self._proxy_stack.close()
            self._proxy_stack = ExitStack()
            env = {
                "ARTIFACT_PROXY_PUBLIC_URL": self.url,
                "ARTIFACT_PROXY_TRUSTED_PROXIES": "127.0.0.1/32",
                "ARTIFACT_PROXY_ENABLE_PRESIGNED_DOWNLOAD": "true" if presigned else "false",
            }
            work = self.work / f"proxy-presigned-{'on' if presigned else 'off'}"
            self.proxy = self._proxy_stack.enter_context(
                running_proxy(str(self.destination), work, env=env, port=self.proxy_port)
            )
            self.presigned = presigned
        return self.proxy

    def stop(self) -> None:
        self._proxy_stack.close()


@contextmanager
def front(work: Path, port: int, tracking_port: int, proxy_port: int) -> Iterator[Path]:
    """Debian's nginx with the shared configuration, in the foreground; its directory (access.log)."""
    nginx = program("nginx", "/usr/sbin/nginx")
    work.mkdir(parents=True, exist_ok=True)
    (work / "mlflow.conf").write_text(
        render(
            NGINX_DIR / "mlflow.conf.template",
            {
                "FRONT_LISTEN": f"127.0.0.1:{port}",
                "MLFLOW_UPSTREAM": f"127.0.0.1:{tracking_port}",
                "ARTIFACTS_UPSTREAM": f"127.0.0.1:{proxy_port}",
            },
        )
    )
    (work / "nginx.conf").write_text(render(NGINX_DIR / "standalone.conf.template", {"FRONT_DIR": str(work)}))
    args = [nginx, "-p", str(work), "-e", "stderr", "-c", str(work / "nginx.conf")]
    process = start_process(args, work / "nginx.log")
    try:
        wait_until(lambda: (work / "nginx.pid").stat().st_size > 0, SERVER_START, "nginx", process)
        yield work
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Origin]]:
    """Both deployments, started side by side (a tracking server takes many seconds to start), with their runs."""
    for name in ("chromium", "chromedriver"):
        program(name)
    with ExitStack() as stack:
        built: dict[str, Origin] = {}
        servers: dict[str, subprocess.Popen[bytes]] = {}
        for version in MLFLOW_VENVS:
            work = tmp_path_factory.mktemp(f"mlflow-{version}")
            front_port, tracking_port, proxy_port = free_port(), free_port(), free_port()
            origin = Origin(version, f"http://127.0.0.1:{front_port}", work, proxy_port, work / "artifacts")
            origin.destination.mkdir()
            stack.callback(origin.stop)
            origin.serve(presigned=True)
            stack.enter_context(front(work / "front", front_port, tracking_port, proxy_port))
            env = {**NO_TELEMETRY, **NO_JOBS}
            if version == WORKER_VERSION:
                # 3.18 refuses per-experiment http(s) locations on other hosts than its default root's, unless told:
                # the last test needs one, on the service's own port.
                env["MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES"] = "http"
            args = [
                mlflow_program(version, "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{work / 'mlflow.db'}",
                "--no-serve-artifacts",
                "--default-artifact-root",
                f"{origin.url}/api/2.0/mlflow-artifacts/artifacts/experiments",
                "--host",
                "127.0.0.1",
                "--port",
                str(tracking_port),
                "--workers",
                "1",
            ]
            servers[version] = start_process(args, work / "mlflow-server.log", env=env, cwd=work)
            stack.callback(stop_process, servers[version])
            built[version] = origin
        for version, origin in built.items():
            # Through the front: the tracking server is up and nginx routes to it.
            wait_until(http_ok(f"{origin.url}/health"), SERVER_START, f"mlflow {version} server", servers[version])
        log_runs(built)
        yield built


def log_runs(origins: dict[str, Origin]) -> None:
    """Each version's client logs the artifacts through its front; 3.18's also one run with a root on another origin."""
    jobs: list[tuple[Origin, str, subprocess.Popen[bytes]]] = []
    for version, origin in origins.items():
        files = origin.work / "files"
        files.mkdir()
        (files / "notes.txt").write_text(f"logged by MLflow {version} through the front, {origin.url}\n")
        (files / "plot.png").write_bytes(png(*PNG_SIZE))
        (files / "table.csv").write_text(CSV)
        experiments = {"front": ""}
        if version == WORKER_VERSION:
            experiments["other-origin"] = (
                f"http://127.0.0.1:{origin.proxy_port}/api/2.0/mlflow-artifacts/artifacts/other"
            )
        for name, location in experiments.items():
            env = {**os.environ, **NO_TELEMETRY, "MLFLOW_TRACKING_URI": origin.url, "PYTHONPATH": ""}
            env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # a 5xx fails at once instead of minutes of back-off
            args = [mlflow_program(version, "python"), "-c", LOG_RUN, name, str(files), location]
            process = subprocess.Popen(args, env=env, cwd=origin.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            jobs.append((origin, name, process))
    for origin, name, process in jobs:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, (
            f"MLflow {origin.version} could not log the {name!r} run:\n{err.decode()[-4000:]}"
        )
        run = json.loads(out.decode().strip().splitlines()[-1])
        assert run["version"] == origin.version
        origin.runs[name] = run


def run_path(run: dict[str, str]) -> str:
    """The run's artifact directory as a path of the artifact API: experiments/<id>/<run id>/artifacts."""
    return run["artifact_uri"].split("/api/2.0/mlflow-artifacts/artifacts/", 1)[1]


# ---------------------------------------------------------------------------------------------------- the browser
@contextmanager
def chromium(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile (no cache, no state from another test), through Debian's driver."""
    options = webdriver.ChromeOptions()
    options.binary_location = program("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    service = Service(executable_path=program("chromedriver"), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(PATIENCE)
    try:
        yield driver
    finally:
        driver.quit()


def waiter(driver: WebDriver) -> WebDriverWait[WebDriver]:
    # The UI re-renders as data arrives: an element found a moment ago may be gone, which only means "not yet".
    return WebDriverWait(
        driver,
        PATIENCE,
        poll_frequency=0.2,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def tree_nodes(driver: WebDriver) -> dict[str, Any]:
    """The artifact tree's entries by name."""
    nodes = driver.find_elements(By.CSS_SELECTOR, '[data-testid="artifact-tree-node"]')
    return {node.text.strip(): node for node in nodes}


def preview_error(driver: WebDriver) -> str | None:
    """A preview's error and the lines after it (its description), if one shows."""
    text = str(driver.find_element(By.TAG_NAME, "body").text)
    at = text.find(PREVIEW_ERROR)
    return None if at < 0 else text[at : at + 400]


def open_artifact(driver: WebDriver, name: str, shown: Callable[[WebDriver], Any]) -> Any:
    """Click `name` in the tree, wait until its preview shows (`shown` returns something true: that is returned) or
    an error does, and fail on an error, with its text."""
    waiter(driver).until(lambda d: tree_nodes(d).get(name), f"{name} in the artifact tree").click()

    def outcome(d: WebDriver) -> tuple[str, Any] | None:
        if value := shown(d):
            return "shown", value
        if error := preview_error(d):
            return "error", error
        return None

    kind, value = waiter(driver).until(outcome, f"the preview of {name}")
    assert kind == "shown", f"the preview of {name} shows an error: {value}"
    assert preview_error(driver) is None, f"a preview shows an error: {preview_error(driver)}"
    return value


def text_shown(expected: str) -> Callable[[WebDriver], bool]:
    def check(driver: WebDriver) -> bool:
        return any(
            element.text.strip() == expected.strip()
            for element in driver.find_elements(By.XPATH, f"//*[contains(text(), '{expected.split()[0]}')]")
        )

    return check


def image_size(name: str) -> Callable[[WebDriver], tuple[int, int] | None]:
    """The natural size of the preview <img>, once it has loaded an image."""
    script = (
        "const img = document.querySelector(arguments[0]);"
        "return img && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null;"
    )

    def check(driver: WebDriver) -> tuple[int, int] | None:
        size = driver.execute_script(script, f'img[alt="{name}"]')
        return (int(size[0]), int(size[1])) if size else None

    return check


def table_cells(driver: WebDriver) -> set[str]:
    return {cell.text.strip() for cell in driver.find_elements(By.CSS_SELECTOR, "table td, table th")} - {""}


def log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def logged(log: Path, pattern: str, since: int = 0) -> bool:
    """Whether a line of an access log (the service's, or the front's) written after its first `since` bytes matches
    a regular expression, waiting for it: both servers write the line just after the response."""

    def found() -> bool:
        with open(log, "rb") as file:
            file.seek(since)
            return re.search(pattern, file.read().decode(errors="replace")) is not None

    try:
        wait_until(found, 30, pattern)
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize(
    "version,presigned",
    [(version, presigned) for version in MLFLOW_VENVS for presigned in (True, False)],
    ids=lambda value: f"presigned-{'on' if value else 'off'}" if isinstance(value, bool) else f"ui-{value}",
)
def test_the_ui_previews_artifacts_served_through_the_front(
    origins: dict[str, Origin], version: str, presigned: bool, tmp_path: Path
) -> None:
    origin = origins[version]
    proxy = origin.serve(presigned)
    run = origin.runs["front"]
    proxy_log, front_log = proxy.log_path, origin.work / "front" / "access.log"
    start = {proxy_log: log_size(proxy_log), front_log: log_size(front_log)}  # what earlier tests logged
    notes = (origin.work / "files" / "notes.txt").read_text()
    shots = f"mlflow-{version}-presigned-{'on' if presigned else 'off'}"
    with chromium(tmp_path) as driver:
        driver.get(f"{origin.url}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}/artifacts")
        try:
            waiter(driver).until(lambda d: set(ARTIFACTS) <= set(tree_nodes(d)), "the artifact tree")
            open_artifact(driver, "notes.txt", text_shown(notes))
            driver.save_screenshot(str(tmp_path / f"{shots}-notes.txt.png"))
            assert open_artifact(driver, "plot.png", image_size("plot.png")) == PNG_SIZE
            driver.save_screenshot(str(tmp_path / f"{shots}-plot.png.png"))
            open_artifact(driver, "table.csv", lambda d: {"alpha", "beta", "12345", "67890"} <= table_cells(d))
            driver.save_screenshot(str(tmp_path / f"{shots}-table.csv.png"))
        except (AssertionError, TimeoutException):
            driver.save_screenshot(str(tmp_path / f"{shots}-failed.png"))
            raise
    # The requests behind the previews, in the service's access log and in the front's (the browser's go through it).
    path = f"/api/2.0/mlflow-artifacts/{{route}}/{re.escape(run_path(run))}/{{name}}"
    for name in ARTIFACTS:
        artifact, presign = (path.format(route=route, name=re.escape(name)) for route in ("artifacts", "presigned"))
        signed = path.format(route="signed-artifacts", name=re.escape(name)) + r"\?expires=\d+&sig=[0-9a-f]+"
        if version == IN_PROCESS_VERSION:
            # 3.17's UI asks the tracking server (/get-artifact), which reads the file from us through the front.
            assert logged(
                front_log,
                since=start[front_log],
                pattern=rf'"GET /get-artifact\?path={re.escape(name)}&run_uuid={run["run_id"]} [^"]*" 200',
            )
            assert logged(proxy_log, since=start[proxy_log], pattern=f'"GET {artifact} HTTP/1.1" 200'), name
            assert "/presigned/" not in proxy.log()
        elif presigned:
            # 3.18's UI: the service signs a URL on the front's origin, and the browser fetches it there.
            for log in (proxy_log, front_log):
                assert logged(log, since=start[log], pattern=f'"GET {presign} HTTP/1.1" 200'), (log.name, name)
                assert logged(log, since=start[log], pattern=f'"GET {signed} HTTP/1.1" 200'), (log.name, name)
        else:
            # 3.18's UI, presigned downloads off: 501 (a console error in the browser), then the proxied GET.
            for log in (proxy_log, front_log):
                assert logged(log, since=start[log], pattern=f'"GET {presign} HTTP/1.1" 501'), (log.name, name)
                assert logged(log, since=start[log], pattern=f'"GET {artifact} HTTP/1.1" 200'), (log.name, name)


def test_the_318_ui_refuses_a_root_on_another_origin(origins: dict[str, Origin], tmp_path: Path) -> None:
    """What the front is for, and that the test above would see it fail: a run whose root names the service's own
    port (not the UI's origin) is listed, through the tracking server, but 3.18's UI fetches none of its previews."""
    origin = origins[WORKER_VERSION]
    proxy = origin.serve(True)
    run = origin.runs["other-origin"]
    assert run["artifact_uri"].startswith(f"{proxy.url}/")
    with chromium(tmp_path) as driver:
        driver.get(f"{origin.url}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}/artifacts")
        waiter(driver).until(lambda d: tree_nodes(d).get("notes.txt"), "the artifact tree").click()
        error = waiter(driver).until(preview_error, "the preview's error")
        driver.save_screenshot(str(tmp_path / "mlflow-other-origin-notes.txt.png"))
    assert "cannot access an artifact server on a different origin" in error
    assert f"/presigned/{run_path(run)}" not in proxy.log()  # the browser never asked


def test_the_previous_mlflow_setup_is_idempotent() -> None:
    # `make test` runs it every time: with both venvs in place it only checks, quickly, and changes nothing.
    mlflow_program(IN_PROCESS_VERSION, "mlflow")
    stamp = MLFLOW_VENVS[IN_PROCESS_VERSION] / ".artifact-proxy-installed"
    before = stamp.stat().st_mtime
    env = {
        **os.environ,
        "MLFLOW_VENV": str(MLFLOW_VENVS[WORKER_VERSION]),
        "MLFLOW_PREV_VENV": str(MLFLOW_VENVS[IN_PROCESS_VERSION]),
    }
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "setup-mlflow-prev-venv.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "setup-mlflow-prev-venv: ok" in result.stdout and "installing" not in result.stdout
    assert stamp.stat().st_mtime == before
