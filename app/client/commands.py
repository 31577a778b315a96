"""`artifact-proxy ls | cp | rm | verify`: the client commands, which app/cli.py loads when one is asked for.

Every failure is one `Error:` line on stderr and exit status 1 (usage mistakes: click's 2); no tracebacks. `--json`
prints one JSON object on stdout instead of text, for scripts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from app.client import tree
from app.client.listing import head_size, list_one_level, list_tree
from app.client.options import MiB, TransferOptions
from app.client.progress import Bars, Summary, report, shows_bars
from app.client.session import ClientError, Session, first_error, session_for
from app.client.uris import Remote, UriError, is_remote, parse_remote
from app.client.verify import compare

T = TypeVar("T")
CONTEXT = {"help_option_names": ["--help"]}


class Size(click.ParamType[int]):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            # pydantic's sizes, imported only when a size is spelled out: a client command starts in half the time.
            from app.store_settings import parse_size

            size = value if isinstance(value, int) else parse_size(value)
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 64MiB)", param, ctx)
        if not isinstance(size, int) or size <= 0:
            self.fail(f"{value!r} is not a positive size", param, ctx)
        return size


def remote_arg(text: str) -> Remote:
    try:
        return parse_remote(text, os.environ.get("MLFLOW_TRACKING_URI"))
    except UriError as exc:
        raise click.UsageError(str(exc)) from exc


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (uvicorn[standard] brings it, not on Windows): its transports receive a large
    download with much less CPU than asyncio's, CPU the server needs too when both run on one machine."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(work: Callable[[Session], Coroutine[Any, Any, T]], remote: Remote, jobs: int, retries: int) -> T:
    """Run `work` with this command's one HTTP session; a failure becomes one line and exit status 1."""

    async def main() -> T:
        session = session_for(remote, jobs, retries)
        async with session.http:
            return await work(session)

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(main())
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    except BaseException as exc:
        failure = first_error(exc)
        if isinstance(failure, ClientError):
            raise click.ClickException(str(failure)) from None
        if isinstance(failure, OSError):
            raise click.ClickException(
                f"{failure.strerror or failure}: {failure.filename or ''}".rstrip(": ")
            ) from None
        raise


def common(command: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.option(
            "-j",
            "--jobs",
            type=click.IntRange(1, 256),
            default=8,
            show_default=True,
            help="Transfers (files, parts, ranges, listings) in flight at once.",
        ),
        click.option(
            "--retries",
            type=click.IntRange(0, 20),
            default=4,
            show_default=True,
            help="Retries of a transient failure (5xx, 408, 429, a cut connection), with backoff.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout, for scripts."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def no_server_recursive(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--no-server-recursive",
        is_flag=True,
        help="Walk one-level listings instead of asking for a recursive one (what servers without it get anyway).",
    )(command)


@click.command("ls", context_settings=CONTEXT)
@click.argument("uri")
@click.option("-r", "--recursive", is_flag=True, help="Every file below, as paths relative to URI.")
@click.option(
    "--glob",
    "pattern",
    help="Pattern on the path relative to URI, as glob=: * within a name, ** across directories.",
)
@click.option("-l", "--long", "long_format", is_flag=True, help="Show sizes.")
@no_server_recursive
@common
def ls(
    uri: str,
    recursive: bool,
    pattern: str | None,
    long_format: bool,
    no_server_recursive: bool,
    jobs: int,
    retries: int,
    as_json: bool,
) -> None:
    """List the artifacts at URI (one level, or with -r the whole tree)."""
    remote = remote_arg(uri)

    async def work(session: Session) -> list[Any]:
        if recursive:
            entries = await list_tree(session, remote, pattern, jobs, not no_server_recursive)
        else:
            entries = await list_one_level(session, remote, pattern)
        if not entries and remote.path:  # nothing below: a file, an empty directory, or nothing at all (404)
            size = await head_size(session, remote)
            if size is not None:
                return [{"path": remote.name, "is_dir": False, "file_size": size}]
        return [
            {"path": e.path, "is_dir": e.is_dir, **({"file_size": e.size} if not e.is_dir else {})} for e in entries
        ]

    files = run(work, remote, jobs, retries)
    if as_json:
        click.echo(json.dumps({"files": files}))
        return
    for entry in files:
        name = entry["path"] + ("/" if entry["is_dir"] else "")
        click.echo(f"{entry.get('file_size', ''):>12}  {name}" if long_format else name)


@click.command("cp", context_settings=CONTEXT)
@click.argument("source")
@click.argument("destination")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory tree.")
@click.option(
    "--multipart-threshold",
    type=Size(),
    default=100 * MiB,
    show_default="100MiB",
    help="Files this large use presigned multipart uploads, and ranged downloads from a store's presigned URLs.",
)
@click.option(
    "--part-size",
    type=Size(),
    default=16 * MiB,
    show_default="16MiB",
    help="Bytes per multipart part and per download range.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Report files the server sent no digest for, and a summary.")
@no_server_recursive
@common
def cp(
    source: str,
    destination: str,
    recursive: bool,
    multipart_threshold: int,
    part_size: int,
    quiet: bool,
    verbose: bool,
    no_server_recursive: bool,
    jobs: int,
    retries: int,
    as_json: bool,
) -> None:
    """Upload (local path to URI) or download (URI to local path) a file, or a tree with -r."""
    if is_remote(source) == is_remote(destination):
        raise click.UsageError("one of SOURCE and DESTINATION must be an artifact URI and the other a local path")
    options = TransferOptions(jobs, multipart_threshold, part_size, not no_server_recursive)
    summary = Summary()
    remote = remote_arg(source if is_remote(source) else destination)

    async def work(session: Session) -> None:
        with Bars(shows_bars(as_json, quiet)) as bars:
            if is_remote(source):
                await tree.download(session, remote, destination, recursive, options, bars, summary)
            else:
                into = destination.endswith("/")
                await tree.upload(session, Path(source), remote, into, recursive, options, bars, summary)

    try:
        run(work, remote, jobs, retries)
    except click.ClickException as exc:
        if not as_json:
            raise
        summary.fail(source, exc.message)
    report(summary, as_json, verbose, "downloaded" if is_remote(source) else "uploaded")
    if summary.failures:
        if not as_json:
            raise click.ClickException(
                f"{len(summary.failures)} of {summary.files + len(summary.failures)} file(s) failed"
            )
        sys.exit(1)


@click.command("rm", context_settings=CONTEXT)
@click.argument("uri")
@click.option("-r", "--recursive", is_flag=True, help="Delete a directory and everything below it.")
@common
def rm(uri: str, recursive: bool, jobs: int, retries: int, as_json: bool) -> None:
    """Delete the artifact at URI (a directory with -r)."""
    remote = remote_arg(uri)
    if not remote.path:
        raise click.UsageError("refusing to delete the whole artifact store")

    async def work(session: Session) -> None:
        if await head_size(session, remote) is None and not recursive:
            raise ClientError(f"{remote} is a directory (use -r to delete it and everything below it)")
        await session.request("DELETE", remote.url(), what=f"delete {remote}")

    run(work, remote, jobs, retries)
    if as_json:
        click.echo(json.dumps({"deleted": remote.path}))


@click.command("verify", context_settings=CONTEXT)
@click.argument("local", type=click.Path(path_type=Path))
@click.argument("uri")
@no_server_recursive
@common
def verify(local: Path, uri: str, no_server_recursive: bool, jobs: int, retries: int, as_json: bool) -> None:
    """Check that URI holds exactly the files of LOCAL (sizes and SHA-256), without downloading them."""
    remote = remote_arg(uri)
    options = TransferOptions(jobs=jobs, server_recursive=not no_server_recursive)

    async def work(session: Session) -> Any:
        return await compare(session, local, remote, options)

    result = run(work, remote, jobs, retries)
    if as_json:
        click.echo(json.dumps(result.as_json()))
    else:
        for name in result.missing:
            click.echo(f"missing: {name} (not on the server)")
        for name in result.extra:
            click.echo(f"extra: {name} (only on the server)")
        for item in result.different:
            click.echo(f"different: {item['path']}: {item['why']}")
        for name in result.not_verified:
            click.echo(f"not verified: {name} (the server sent no digest; sizes match)", err=True)
        click.echo(
            f"{len(result.same)} same, {len(result.missing)} missing, {len(result.extra)} extra, "
            f"{len(result.different)} different",
            err=True,
        )
    if not result.ok:
        sys.exit(1)
