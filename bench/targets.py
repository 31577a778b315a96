"""The targets the report judges, as data: one table, TARGETS, in the order the report lists them.

Each kind of target holds its threshold once and builds its printed name from that same number, so what the
report claims and what it checks cannot drift apart. A row's verdict is None when a figure is missing (a workload
failed or was not run); a zero counts as missing too, as a failed timing, never as a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bench.config import CONCURRENCY
from bench.results import Results, dig, fmt_s, mb, ratio

Where = tuple[str, ...]  # keys into the results, for dig()
OPS = ("PUT", "GET", "LIST")
NEW_PUT = "PUT-new"  # PUTs to distinct paths (wrk), what real clients send
TRANSFERS = ("upload", "download")
RSS_LIMIT_MB = 100  # per serving process: a worker streams a file through, it never holds one


@dataclass(frozen=True)
class Row:
    name: str
    measured: str
    ok: bool | None


class Target(Protocol):
    def row(self, results: Results) -> Row | None:
        """The row for the report, or None when this target has no row in this run."""
        ...


@dataclass(frozen=True)
class WithinTimes:
    """Ours takes at most `factor` times the seconds of a baseline that does less (the raw sink, nginx)."""

    what: str
    ours: Where
    ref: Where
    ref_name: str  # in the target's name
    ref_label: str  # in the measured cell
    factor: float

    def row(self, results: Results) -> Row:
        o, r = dig(results, *self.ours), dig(results, *self.ref)
        return Row(
            f"{self.what} <= {self.factor:g}x {self.ref_name}",
            f"{fmt_s(o)} s vs {self.ref_label} {fmt_s(r)} s = {ratio(o, r)}",
            o <= self.factor * r if o and r else None,
        )


@dataclass(frozen=True)
class FasterThan:
    """Ours is at least `factor` times faster than the server it replaces."""

    what: str
    ours: Where
    ref: Where
    ref_label: str
    factor: float

    def row(self, results: Results) -> Row:
        o, r = dig(results, *self.ours), dig(results, *self.ref)
        return Row(
            f"{self.what} >= {self.factor:g}x faster than {self.ref_label}",
            f"{self.ref_label} {fmt_s(r)} s / ours {fmt_s(o)} s = {ratio(r, o)}",
            self.factor * o <= r if o and r else None,
        )


@dataclass(frozen=True)
class RateOver:
    """16 KiB requests of one kind: ours serves at least `factor` times MLflow's requests per second."""

    op: str
    factor: float

    def row(self, results: Results) -> Row:
        name = f"16 KiB {self.op} c={CONCURRENCY} >= {self.factor:g}x MLflow req/s"
        ours, theirs = dig(results, "small", "proxy", self.op), dig(results, "small", "mlflow", self.op)
        if not (ours and theirs):
            return Row(name, "n/a", None)
        return Row(
            name,
            f"{ours['rps']:.0f} vs {theirs['rps']:.0f} = {ratio(ours['rps'], theirs['rps'])}",
            ours["rps"] >= self.factor * theirs["rps"],
        )


@dataclass(frozen=True)
class ShareOfNginx:
    """16 KiB requests of one kind: ours serves at least `share` of nginx's requests per second, the ceiling."""

    op: str
    share: float

    def row(self, results: Results) -> Row:
        name = f"16 KiB {self.op} c={CONCURRENCY} >= {self.share:.0%} of nginx req/s"
        ours, theirs = dig(results, "small", "proxy", self.op), dig(results, "small", "nginx", self.op)
        if not (ours and theirs):
            return Row(name, "n/a", None)
        return Row(
            name,
            f"{ours['rps']:.0f} vs {theirs['rps']:.0f} = {ours['rps'] / theirs['rps']:.0%}",
            ours["rps"] >= self.share * theirs["rps"],
        )


@dataclass(frozen=True)
class MixedSteady:
    """The mixed workload: no request failed, and the tree's RSS at the end is within `slack` of the start's."""

    slack: float
    slack_mb: float

    def row(self, results: Results) -> Row:
        m = dig(results, "mixed", "proxy")
        name = f"mixed GET/PUT/LIST c=256: no errors, RSS flat (end <= {self.slack:g}x start + {self.slack_mb:g} MB)"
        if not m:
            return Row(name, "n/a", None)
        flat = m["rss_last"] <= self.slack * m["rss_first"] + self.slack_mb * 1e6
        return Row(
            name,
            f"{m['errors']} errors, RSS {mb(m['rss_first'])} -> {mb(m['rss_last'])} MB",
            m["errors"] == 0 and flat,
        )


@dataclass(frozen=True)
class LatencyUnder:
    """16 KiB requests of one kind: our p99 is at most `p99_ms` and no request failed."""

    op: str
    p99_ms: float

    def row(self, results: Results) -> Row:
        ours = dig(results, "small", "proxy", self.op)
        return Row(
            f"16 KiB {self.op} c={CONCURRENCY} p99 <= {self.p99_ms:g} ms, no errors",
            f"p99 {ours['p99_ms']:.1f} ms, {ours['errors']} errors" if ours else "n/a",
            (ours["p99_ms"] <= self.p99_ms and ours["errors"] == 0) if ours else None,
        )


@dataclass(frozen=True)
class PeakRss:
    """The largest single process of our tree stays under `limit_mb` while it moves a file."""

    what: str
    rss: Where
    limit_mb: float = RSS_LIMIT_MB
    # Shown instead of "n/a" when the whole section (the first key of `rss`) is empty: it was not run at all.
    not_run: str | None = None
    # Informational targets get a row only when they were measured.
    informational: bool = False

    def row(self, results: Results) -> Row | None:
        r = dig(results, *self.rss)
        if not r and self.informational:
            return None
        name = f"peak RSS per serving process <= {self.limit_mb:g} MB, {self.what}"
        if r:
            measured = f"{mb(r['proc_max'])} MB ({r['proc_max_label']})"
        else:
            measured = self.not_run if self.not_run and not dig(results, self.rss[0]) else "n/a"
        return Row(
            f"(informational) {name}" if self.informational else name,
            measured,
            r["proc_max"] <= self.limit_mb * 1e6 if r else None,
        )


@dataclass(frozen=True)
class IdleShare:
    """Our whole tree at rest takes at most 1/`factor` of what MLflow's does."""

    factor: float

    def row(self, results: Results) -> Row:
        pi, mi = dig(results, "idle", "proxy", "tree"), dig(results, "idle", "mlflow", "tree")
        return Row(
            f"idle RSS of the tree <= 1/{self.factor:g} of MLflow's",
            f"{mb(pi)} MB vs {mb(mi)} MB = {ratio(pi, mi)}",
            self.factor * pi <= mi if pi and mi else None,
        )


@dataclass(frozen=True)
class S3Within:
    """On S3, going through us costs at most `factor` times the time of the same client talking to S3 directly."""

    op: str
    factor: float

    def row(self, results: Results) -> Row:
        d, p = dig(results, "s3", "direct", self.op), dig(results, "s3", "proxy", self.op, "seconds")
        return Row(
            f"S3 1 GiB {self.op} <= {self.factor:g}x direct",
            f"{ratio(p, d)}" if p and d else (results.get("s3") or {}).get("skipped", "n/a"),
            p <= self.factor * d if p and d else None,
        )


def _large(server: str, op: str) -> Where:
    return ("large", server, op, "seconds")


TARGETS: tuple[Target, ...] = (
    WithinTimes("upload 1 GiB", _large("proxy", "upload"), _large("sink", "upload"), "raw-sink time", "sink", 1.5),
    FasterThan("upload 1 GiB", _large("proxy", "upload"), _large("mlflow", "upload"), "MLflow", 3),
    WithinTimes("download 1 GiB", _large("proxy", "download"), _large("nginx", "download"), "nginx", "nginx", 2.5),
    FasterThan("download 1 GiB", _large("proxy", "download"), _large("mlflow", "download"), "MLflow", 3),
    *(t for op in OPS for t in (RateOver(op, 6), LatencyUnder(op, 30))),
    RateOver(NEW_PUT, 4),
    LatencyUnder(NEW_PUT, 30),
    ShareOfNginx("GET", 0.25),
    ShareOfNginx("LIST", 0.25),
    MixedSteady(1.2, 10),
    *(PeakRss(f"1 GiB {op}", ("large", "proxy", op, "rss")) for op in TRANSFERS),
    *(PeakRss(f"4 GiB {op}", ("big", op, "rss"), not_run="not run (--no-big)") for op in TRANSFERS),
    IdleShare(10),
    *(PeakRss(f"S3 1 GiB {op}", ("s3", "proxy", op, "rss"), informational=True) for op in TRANSFERS),
    *(S3Within(op, 1.3) for op in TRANSFERS),
)


def evaluate(results: Results) -> list[Row]:
    return [row for target in TARGETS if (row := target.row(results)) is not None]
