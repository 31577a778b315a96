"""Race-free path resolution under the local artifact root: every open is checked on what was opened.

A client path is opened relative to a descriptor of the root with `openat2(RESOLVE_BENEATH)` where the kernel has it
(Linux 5.6+): symlinks are followed only while they stay below the root, in the same system call that opens, so a
rename or a link swapped in between can neither redirect the open nor make an existing file look missing. Where
`openat2` is missing (or refuses, as it does for absolute links, even ones that point back inside the root), the
fallback opens the path normally and then checks the descriptor's own name (`/proc/self/fd`) against the root: still
one open, still checked on what was opened, and a file outside is closed without a byte read.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Callable

from app.errors import PathOutsideRoot

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
# openat2 has the same number on every architecture that uses the generic syscall table (all but alpha and ia64).
_SYS_OPENAT2 = 437
_OPENAT2_ARCHES = {"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x", "armv7l", "i686", "i386"}

READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # O_NONBLOCK: a FIFO never blocks the open
DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
PATH_FLAGS = os.O_PATH | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_openat2() -> Callable[..., int] | None:
    if platform.system() != "Linux" or platform.machine() not in _OPENAT2_ARCHES:
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall  # CDLL calls release the GIL
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    function: Callable[..., int] = syscall
    return function


_syscall = _load_openat2()
_PROC_FD = os.path.isdir("/proc/self/fd")


class Root:
    """The artifact root, held open for the life of the process, and every open below it."""

    def __init__(self, real_root: str) -> None:
        self.path = real_root
        self._below = real_root.rstrip("/") + "/"  # what every name under the root starts with
        self.fd = os.open(real_root, DIR_FLAGS)
        self._openat2 = _syscall is not None

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def contains(self, real: str) -> bool:
        return real == self.path or real.startswith(self.path + os.sep)

    def open(self, relative: str, flags: int) -> int:
        """Open `relative` (a canonical artifact path, "" for the root) below the root; PathOutsideRoot if it leaves.

        OSErrors of the open itself (ENOENT, ENOTDIR, ELOOP, ...) propagate unchanged."""
        if not relative:
            return os.open(".", flags, dir_fd=self.fd)
        if self._openat2:
            fd = self._open_beneath(relative, flags)
            if fd >= 0:
                return fd
        return self._open_and_check(relative, flags)

    def _open_beneath(self, relative: str, flags: int) -> int:
        """The openat2 descriptor, or -1 when only the fallback can decide (kernel without it, absolute links)."""
        assert _syscall is not None
        how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
        fd = int(_syscall(_SYS_OPENAT2, self.fd, os.fsencode(relative), ctypes.byref(how), ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code == errno.EXDEV:
            return -1  # leaves the root, or an absolute link that may point back in: the fallback decides
        if code in (errno.ENOSYS, errno.EPERM):
            self._openat2 = False  # an old kernel, or a seccomp filter that forbids the call
            return -1
        if code == errno.EINTR:
            return self._open_beneath(relative, flags)
        raise OSError(code, os.strerror(code), relative)

    def _open_and_check(self, relative: str, flags: int) -> int:
        try:
            fd = os.open(relative, flags, dir_fd=self.fd)
        except (FileNotFoundError, NotADirectoryError):
            # Missing, but through a link that leaves the root: that is the answer the client gets (400).
            if not self.contains(os.path.realpath(os.path.join(self.path, relative))):
                raise PathOutsideRoot() from None
            raise
        try:
            real = self._real_name(fd, relative)
        except BaseException:
            os.close(fd)
            raise
        if not self.contains(real):
            os.close(fd)
            raise PathOutsideRoot()
        return fd

    def _real_name(self, fd: int, relative: str) -> str:
        if _PROC_FD:
            name = os.readlink(f"/proc/self/fd/{fd}")
            return name.removesuffix(" (deleted)")  # replaced after we opened it: still the file we hold
        # No /proc: the resolved name must still be the very file we opened.
        real = os.path.realpath(os.path.join(self.path, relative))
        held, named = os.fstat(fd), os.stat(real)
        if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
            raise OSError(errno.ESTALE, "the path changed while it was being opened", relative)
        return real

    def open_parent(self, relative: str, create: bool) -> int:
        """A directory descriptor for the parent of `relative`, creating missing parents below the root if asked."""
        parent = relative.rpartition("/")[0]
        try:
            return self.open(parent, DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                raise
        return self._make_dirs(parent)

    def _make_dirs(self, relative: str) -> int:
        """mkdir -p, one component at a time, each created inside a directory that was itself opened below the root
        (a link planted in between can never make us create a directory elsewhere)."""
        fd = os.dup(self.fd)
        done = ""
        try:
            for name in relative.split("/"):
                done = f"{done}/{name}" if done else name
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                next_fd = self.open(done, DIR_FLAGS)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def where(self, relative: str, follow_last: bool) -> str | None:
        """Where `relative` really is, relative to the root ("" for the root itself): links followed, the last one
        only if `follow_last`; missing components are named below the deepest ancestor that exists. None when a
        parent is a file (the operation fails anyway); PathOutsideRoot if it leaves the root."""
        if not relative:
            return ""
        parent, _, name = relative.rpartition("/")
        if not follow_last:
            base = self.where(parent, follow_last=True)
            return None if base is None else f"{base}/{name}".lstrip("/")
        try:
            fd = self.open(relative, PATH_FLAGS)
        except FileNotFoundError:
            return self.where(relative, follow_last=False)
        except NotADirectoryError:
            return None
        try:
            real = self._real_name(fd, relative)
        finally:
            os.close(fd)
        if real == self.path:
            return ""
        # Under the root (the open stays beneath it): a slice, not relpath's normalisation, on every authorized read.
        below = self._below
        return real[len(below) :] if real.startswith(below) else os.path.relpath(real, self.path)
