"""`hdfs://` and `viewfs://` destinations: recognised, and refused at startup with what a deployment would need.

An HDFS backend would sit on pyarrow's `HadoopFileSystem`, which loads libhdfs (JNI) into the process and so needs a
Java runtime and the Hadoop client jars as well; docs/destinations.md describes how it would plug in. This build
has no such backend, so `open_hdfs` names everything missing on this machine and refuses the destination.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from app.settings import Settings
from app.storage import StoreConfigError
from app.storage.base import ArtifactStore


def _libhdfs_dirs() -> list[Path]:
    """Where pyarrow looks for libhdfs.so: ARROW_LIBHDFS_DIR, else $HADOOP_HOME/lib/native."""
    dirs = [Path(os.environ["ARROW_LIBHDFS_DIR"])] if os.environ.get("ARROW_LIBHDFS_DIR") else []
    if os.environ.get("HADOOP_HOME"):
        dirs.append(Path(os.environ["HADOOP_HOME"]) / "lib" / "native")
    return dirs


def missing_requirements() -> list[str]:
    """What this machine lacks for pyarrow's HDFS client, in the words an operator would search for."""
    missing: list[str] = []
    if importlib.util.find_spec("pyarrow") is None:
        missing.append("pyarrow (pip install pyarrow)")
    if not any((directory / "libhdfs.so").exists() for directory in _libhdfs_dirs()):
        missing.append("libhdfs.so (set ARROW_LIBHDFS_DIR, or HADOOP_HOME with lib/native/libhdfs.so)")
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        missing.append("a Java runtime (JAVA_HOME)")
    if not os.environ.get("CLASSPATH") and shutil.which("hadoop") is None:
        missing.append("the Hadoop client jars (CLASSPATH=$(hadoop classpath --glob))")
    return missing


def open_hdfs(uri: str, settings: Settings) -> ArtifactStore:
    scheme = urlsplit(uri).scheme.lower() or "hdfs"
    missing = missing_requirements()
    needs = f"; this machine also lacks: {', '.join(missing)}" if missing else ""
    raise StoreConfigError(
        f"{scheme}:// destinations are not supported by this build of artifact-proxy ({uri!r}): an HDFS backend "
        f"needs pyarrow's HadoopFileSystem with libhdfs, a Java runtime and the Hadoop client jars{needs}. "
        "See docs/destinations.md"
    )
