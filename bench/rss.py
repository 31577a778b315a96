"""RSS of a server's whole process tree, sampled in a thread while a workload runs, and at rest.

The targets are per serving process (a worker must stream, not hold a file) and for the whole tree (what the
deployment costs), so the sampler keeps the peak of each process and the peak of their sum.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psutil


def label(p: psutil.Process) -> str:
    """The process's role in its tree, so the report can say which one peaked (a worker, the main process...)."""
    try:
        cmd = p.cmdline()
        name = p.name()
    except psutil.Error:
        return "?"
    text = " ".join(cmd)
    if "nginx" in name:
        return "nginx " + ("master" if "master" in text else "worker")
    if "resource_tracker" in text:
        return "resource tracker"
    if "multiprocessing" in text or "spawn_main" in text:
        return "worker"
    if "huey" in text or "job" in text.lower():
        return "job runner"
    return "main" if cmd else name


class RssSampler:
    """Samples the RSS of a process tree every `interval` seconds; keeps the max per process and for the tree."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.per: dict[int, int] = {}
        self.labels: dict[int, str] = {}
        self.tree_max = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._procs: dict[int, psutil.Process] = {}

    def _sample(self) -> None:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            proc = self._procs.setdefault(p.pid, p)
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            if p.pid not in self.labels:
                self.labels[p.pid] = label(proc)
            self.per[p.pid] = max(self.per.get(p.pid, 0), rss)
            total += rss
        self.tree_max = max(self.tree_max, total)
        self.samples.append(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def result(self) -> dict[str, Any]:
        top = max(self.per, key=lambda k: self.per[k]) if self.per else None
        return {
            "tree_max": self.tree_max,
            "proc_max": self.per.get(top, 0) if top else 0,
            "proc_max_label": self.labels.get(top, "") if top else "",
            "per": {f"{self.labels[k]} {k}": v for k, v in sorted(self.per.items())},
            "nprocs": len(self.per),
        }


def merge_rss(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs as one: the run whose single process peaked highest, with the highest tree peak of any run."""
    best = max(results, key=lambda r: r["proc_max"])
    return {**best, "tree_max": max(r["tree_max"] for r in results)}


def idle_rss(pid: int, settle: float = 3.0, window: float = 2.0) -> dict[str, Any]:
    """The tree at rest: wait `settle` seconds for start-up to finish, then the median of `window` seconds."""
    time.sleep(settle)
    with RssSampler(pid, interval=0.1) as sampler:
        time.sleep(window)
    res = sampler.result()
    res["tree"] = int(statistics.median(sampler.samples))
    return res
