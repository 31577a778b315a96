"""`verify LOCAL URI`: does the server hold exactly this local tree? Nothing is downloaded.

One listing of the remote tree, then a HEAD per file present on both sides (`jobs` at a time) for its size and
`Repr-Digest`, compared with the local file's size and SHA-256. `missing` are local files the server lacks, `extra`
are server files with no local counterpart, `different` differ in size or digest; a server that sends no digest is
compared on sizes only, and those files are listed as `not_verified`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.client.digests import file_sha256, from_header
from app.client.listing import Entry, head_size, list_tree
from app.client.options import TransferOptions
from app.client.session import ClientError, Session, first_error
from app.client.tree import local_files
from app.client.uris import Remote


@dataclass
class Comparison:
    same: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    different: list[dict[str, str]] = field(default_factory=list)
    not_verified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "same": len(self.same),
            "missing": self.missing,
            "extra": self.extra,
            "different": self.different,
            "not_verified": self.not_verified,
        }


async def compare(session: Session, local: Path, remote: Remote, options: TransferOptions) -> Comparison:
    if local.is_file():
        size = await head_size(session, remote)
        if size is None:
            raise ClientError(f"{remote} is a directory, {local} a file")
        local_names, remote_entries = [""], [Entry("", False, size)]
    elif local.is_dir():
        local_names = local_files(local)
        remote_entries = await list_tree(session, remote, None, options.jobs, options.server_recursive)
    else:
        raise ClientError(f"{local}: no such file or directory")
    remote_sizes = {entry.path: entry.size for entry in remote_entries}
    result = Comparison(
        missing=[name for name in local_names if name not in remote_sizes],
        extra=sorted(name for name in remote_sizes if name not in set(local_names)),
    )
    slots = asyncio.Semaphore(options.jobs)

    async def check(name: str) -> None:
        path = local / name if name else local
        async with slots:
            head = await session.request("HEAD", remote.child(name).url() if name else remote.url(), what=name)
            stated = from_header(head.headers.get("repr-digest"))
            size = int(head.headers.get("content-length", -1))
            local_size = path.stat().st_size
            if size != local_size:
                result.different.append({"path": name or path.name, "why": f"size {local_size} here, {size} there"})
                return
            if stated is None:
                result.not_verified.append(name or path.name)
                result.same.append(name or path.name)
                return
            actual = (await asyncio.to_thread(file_sha256, path)).hexdigest()
        if actual != stated:
            result.different.append({"path": name or path.name, "why": f"SHA-256 {actual} here, {stated} there"})
        else:
            result.same.append(name or path.name)

    try:
        async with asyncio.TaskGroup() as group:
            for name in local_names:
                if name in remote_sizes:
                    group.create_task(check(name))
    except BaseExceptionGroup as exc:
        raise first_error(exc) from None
    result.different.sort(key=lambda d: d["path"])
    result.same.sort()
    result.not_verified.sort()
    return result
