"""An SFTP server for tests: asyncssh's SFTP server in its own process on 127.0.0.1, chrooted to a directory.

It has a throwaway host key (pinned in a known_hosts file, so host-key checking stays on) and accepts one client
key; with `--password` it also accepts that password. Run as `python -m tests.servers.sftp serve ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from tests.servers import STARTUP_TIMEOUT, StorageServer, free_port, stop_process, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
USER = "tester"


@dataclass(frozen=True)
class SFTPFiles:
    """Keys and client files for one server: the proxy's env points at these."""

    directory: Path
    host_key: Path
    client_key: Path
    authorized_keys: Path
    known_hosts: Path
    ssh_config: Path  # empty: keeps the developer's ~/.ssh/config out of the tests

    @classmethod
    def at(cls, directory: Path) -> SFTPFiles:
        names = ("host_key", "client_key", "authorized_keys", "known_hosts", "ssh_config")
        return cls(directory, *(directory / name for name in names))


def make_files(directory: Path, port: int) -> SFTPFiles:
    directory.mkdir(parents=True, exist_ok=True)
    host_key, client_key = asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")
    files = SFTPFiles.at(directory)
    host_key.write_private_key(files.host_key)
    client_key.write_private_key(files.client_key)
    files.client_key.chmod(0o600)
    client_key.write_public_key(files.authorized_keys)
    public = host_key.export_public_key().decode().strip()
    files.known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")
    files.ssh_config.write_text("")
    return files


def proxy_env(files: SFTPFiles) -> dict[str, str]:
    return {
        "ARTIFACT_PROXY_SFTP_KNOWN_HOSTS": str(files.known_hosts),
        "ARTIFACT_PROXY_SFTP_IDENTITY_FILE": str(files.client_key),
        "ARTIFACT_PROXY_SFTP_CONFIG": str(files.ssh_config),
        "SSH_AUTH_SOCK": "",  # no agent: only the test key may log in
    }


def _banner(port: int) -> bool:
    # The whole identification line, never one recv: it may arrive in pieces.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as banner:
        return banner.readline(1024).startswith(b"SSH-2.0-")


def start_sftp(root: Path, port: int, files: SFTPFiles, password: str | None = None) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "tests.servers.sftp",
        "serve",
        "--root",
        str(root),
        "--port",
        str(port),
        "--host-key",
        str(files.host_key),
        "--authorized-keys",
        str(files.authorized_keys),
    ]
    if password:
        args += ["--password", password]
    with open(files.directory / f"sftp-{port}.log", "ab") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
    try:
        wait_until(lambda: _banner(port), STARTUP_TIMEOUT, "sftp server", process)
    except BaseException:
        stop_process(process)
        raise
    return process


def restart_sftp(server: StorageServer) -> None:
    """Start the server again on its port, root and keys, after a test stopped it; updates `server.process`."""
    stop_process(server.process)
    files = SFTPFiles.at(Path(server.env["ARTIFACT_PROXY_SFTP_KNOWN_HOSTS"]).parent)
    port = int(server.endpoint.rsplit(":", 1)[1])
    server.process = start_sftp(files.directory.parent / "sftp-root", port, files)


@contextmanager
def sftp_server(tmp_dir: Path, password: str | None = None) -> Iterator[StorageServer]:
    """asyncssh's SFTP server chrooted to `tmp_dir/sftp-root`, keys in `tmp_dir/sftp-keys`; `password` also allowed."""
    port = free_port()
    files = make_files(Path(tmp_dir) / "sftp-keys", port)
    root = Path(tmp_dir) / "sftp-root"
    process = start_sftp(root, port, files, password)
    server = StorageServer(
        "sftp", f"sftp://{USER}@127.0.0.1:{port}/artifacts", proxy_env(files), f"127.0.0.1:{port}", process
    )
    try:
        yield server
    finally:
        stop_process(server.process)  # a test may have restarted it


# The server process ---------------------------------------------------------------------------------------------
class _PasswordServer(asyncssh.SSHServer):
    def __init__(self, password: str | None) -> None:
        self._password = password

    def password_auth_supported(self) -> bool:
        return self._password is not None

    def validate_password(self, username: str, password: str) -> bool:
        return password == self._password


async def _serve(options: argparse.Namespace) -> None:
    root = options.root
    await asyncssh.listen(
        "127.0.0.1", options.port,
        server_host_keys=[options.host_key],
        authorized_client_keys=options.authorized_keys,
        server_factory=lambda: _PasswordServer(options.password),
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root),
        allow_scp=False,
    )  # fmt: skip
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.sftp")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--password", default=None)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
