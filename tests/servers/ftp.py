"""An FTP server for tests: pyftpdlib in its own process on 127.0.0.1, one user confined to a directory.

Passive mode only (as the proxy uses it); with `--tls` the server is FTPS (explicit, AUTH TLS) and refuses plain
control and data channels, so a passing test really ran over TLS. Run as `python -m tests.servers.ftp serve ...`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import STARTUP_TIMEOUT, StorageServer, free_port, stop_process, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "tester", "s3cret-pass"


def write_certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (key and certificate in one PEM); the proxy trusts it as its CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = directory / "ftps.pem"
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem_key + certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _greets(port: int) -> bool:
    # The whole greeting line, never one recv: a reply may arrive in pieces.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as reply:
        return reply.readline(1024).startswith(b"220")


def start_ftp(
    root: Path, port: int, log_dir: Path, certificate: Path | None = None, mlsx: bool = True
) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "tests.servers.ftp", "serve", "--root", str(root), "--port", str(port)]
    if certificate is not None:
        args += ["--tls", str(certificate)]
    if not mlsx:
        args.append("--no-mlsx")
    with open(log_dir / f"ftp-{port}.log", "ab") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
    try:
        wait_until(lambda: _greets(port), STARTUP_TIMEOUT, "ftp server", process)
    except BaseException:
        stop_process(process)
        raise
    return process


@contextmanager
def ftp_server(tmp_dir: Path, tls: bool = False, mlsx: bool = True) -> Iterator[StorageServer]:
    """pyftpdlib serving `tmp_dir/ftp-root`; `mlsx=False` leaves out MLSD/MLST, as vsftpd does."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    certificate = write_certificate(tmp_dir) if tls else None
    process = start_ftp(tmp_dir / "ftp-root", port, tmp_dir, certificate, mlsx)
    scheme = "ftps" if tls else "ftp"
    env = {"ARTIFACT_PROXY_FTP_CA_FILE": str(certificate)} if certificate else {}
    server = StorageServer(
        scheme, f"{scheme}://{USER}:{PASSWORD}@127.0.0.1:{port}/artifacts", env, f"127.0.0.1:{port}", process
    )
    try:
        yield server
    finally:
        stop_process(server.process)  # a test may have restarted it


# The server process ---------------------------------------------------------------------------------------------
def _naming_write_errors(base: type) -> type:
    """pyftpdlib aborts a failed STOR with "426 None; transfer aborted." (it reads errno off a wrapper that has none);
    real servers name the cause ("No space left on device"), and so does this one."""
    from pyftpdlib.exceptions import _FileReadWriteError  # type: ignore[import-untyped]

    class NamingWriteErrors(base):  # type: ignore[misc, valid-type]
        def handle_error(self) -> None:
            try:
                raise  # noqa: PLE0704 - pyftpdlib calls this while handling the error
            except _FileReadWriteError as err:
                cause = err.__cause__
                reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else "Write error"
                self._resp = (f"426 {reason}; transfer aborted.", logging.getLogger("pyftpdlib").warning)
                self.close()
            except Exception:
                super().handle_error()

    return NamingWriteErrors


def main() -> None:
    from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-untyped]
    from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler  # type: ignore[import-untyped]
    from pyftpdlib.servers import FTPServer  # type: ignore[import-untyped]

    parser = argparse.ArgumentParser(prog="python -m tests.servers.ftp")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", default=None, help="PEM file with key and certificate: serve FTPS only")
    parser.add_argument("--no-mlsx", action="store_true", help="answer MLSD/MLST with 500, as vsftpd does")
    options = parser.parse_args()
    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, PASSWORD, options.root, perm="elradfmwMT")
    handler: type[FTPHandler] = FTPHandler
    if options.tls:
        handler = TLS_FTPHandler
        handler.certfile = options.tls
        handler.tls_control_required = handler.tls_data_required = True
    if options.no_mlsx:
        commands = {name: spec for name, spec in handler.proto_cmds.items() if name not in ("MLSD", "MLST")}
        handler = type("NoMLSxHandler", (handler,), {"proto_cmds": commands})
    handler.dtp_handler = _naming_write_errors(handler.dtp_handler)
    handler.authorizer = authorizer
    handler.auth_failed_timeout = 0.1  # pyftpdlib stalls a failed login for 3 s; tests of refusals need no stall
    handler.permit_foreign_addresses = False
    server = FTPServer(("127.0.0.1", options.port), handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
