"""An independent model of active_series: the specification the property tests hold the database to.

Pure Python, no SQL.  The model keeps every piece of activity (series, project, ``report.created``,
report id) instead of a cache, so every figure is computed from scratch:

- ``count_active``: series whose overall last_seen (greatest ``created`` ever recorded, never
  lowered by a report delete) is in ``[from, to)``;
- ``period_usage`` / ``period_series``: the distinct series with activity in a recorded period;
- billing periods: recorded periods that never overlap, plus an optional configuration (anchor,
  interval) set by ``set_billing_period``; without one, calendar months in UTC.

A series is (testbed, benchmark, variant, measure); the model names a variant by its parameters
(canonical JSON text, ``{}`` for the benchmark's empty variant, which a report_benchmark without
variant_id reports).  Deleting a report keeps its activity; hard-deleting a testbed, benchmark,
variant, measure or project drops every activity of its series; soft delete and visibility act
at read time only.  All datetimes are timezone-aware and all period arithmetic is done on UTC
wall-clock time.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

Series = tuple[int, int, str, int]  # (testbed_id, benchmark_id, variant parameters, measure_id)
EMPTY_VARIANT = "{}"
Period = tuple[datetime, datetime]  # [start, end)

VISIBILITIES = ("public", "private")


def utc(t: datetime) -> datetime:
    """``t`` (aware) expressed in UTC."""
    if t.tzinfo is None:
        raise ValueError(f"naive datetime {t!r}: the model only takes aware datetimes")
    return t.astimezone(UTC)


def add_months(t: datetime, n: int) -> datetime:
    """``t + n months`` on UTC wall-clock time, as PostgreSQL does: the day is clamped to the
    length of the target month (Jan 31 + 1 month = Feb 28/29), the time of day is kept."""
    t = utc(t)
    index = t.year * 12 + (t.month - 1) + n
    year, month0 = divmod(index, 12)
    month = month0 + 1
    day = min(t.day, calendar.monthrange(year, month)[1])
    return t.replace(year=year, month=month, day=day)


def month_start(t: datetime) -> datetime:
    """Start of the calendar month (UTC) containing ``t``."""
    return utc(t).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def calendar_month(t: datetime) -> Period:
    """The calendar month in UTC containing ``t``."""
    start = month_start(t)
    return start, add_months(start, 1)


def whole_months(start: datetime, end: datetime) -> int | None:
    """N when ``end == start + N months`` (N >= 1, UTC wall clock), else None."""
    s, e = utc(start), utc(end)
    n = (e.year - s.year) * 12 + (e.month - s.month)
    if n >= 1 and add_months(s, n) == e:
        return n
    return None


@dataclass(frozen=True)
class BillingConfig:
    """Anchor and interval of an organization's billing periods: exactly one of ``months`` and
    ``duration`` is set."""

    anchor: datetime
    months: int | None = None
    duration: timedelta | None = None

    @classmethod
    def from_bounds(cls, start: datetime, end: datetime) -> BillingConfig:
        if not start < end:
            raise ValueError(f"billing period start {start} must be before its end {end}")
        months = whole_months(start, end)
        if months is not None:
            return cls(anchor=utc(start), months=months)
        return cls(anchor=utc(start), duration=end - start)

    def boundary(self, k: int) -> datetime:
        """``anchor + k * interval``, computed from the anchor each time (never by repeated
        addition)."""
        if self.months is not None:
            return add_months(self.anchor, k * self.months)
        assert self.duration is not None
        return self.anchor + k * self.duration

    def cell(self, t: datetime) -> Period:
        """The interval ``[anchor + k*i, anchor + (k+1)*i)`` containing ``t`` (``t >= anchor``)."""
        if t < self.anchor:
            raise ValueError(f"{t} is before the anchor {self.anchor}")
        if self.months is not None:
            a, u = self.anchor, utc(t)
            k = ((u.year - a.year) * 12 + (u.month - a.month)) // self.months
        else:
            assert self.duration is not None
            k = (t - self.anchor) // self.duration
        k = max(k, 0)
        while self.boundary(k) > t:
            k -= 1
        while self.boundary(k + 1) <= t:
            k += 1
        return self.boundary(k), self.boundary(k + 1)


@dataclass
class Project:
    organization_id: int
    visibility: str = "public"
    deleted: bool = False


@dataclass(frozen=True)
class Report:
    project_id: int
    testbed_id: int
    created: datetime


@dataclass(frozen=True)
class Activity:
    """One metric row's contribution: ``series`` was active at ``created`` through ``report_id``."""

    series: Series
    project_id: int
    created: datetime
    report_id: int


@dataclass(frozen=True, order=True)
class SeriesRow:
    """A row of ``period_series``."""

    project_id: int
    testbed_id: int
    benchmark_id: int
    variant: str
    measure_id: int
    first_seen: datetime
    last_seen: datetime


@dataclass
class Organization:
    periods: list[Period] = field(default_factory=list)  # recorded, sorted, never overlapping
    config: BillingConfig | None = None
    activity: list[Activity] = field(default_factory=list)


class Model:
    """The whole state of the reference data and the billing semantics."""

    def __init__(self) -> None:
        self.organizations: dict[int, Organization] = {}
        self.projects: dict[int, Project] = {}
        self.testbeds: dict[int, int] = {}  # id -> project_id
        self.benchmarks: dict[int, int] = {}
        self.measures: dict[int, int] = {}
        self.reports: dict[int, Report] = {}  # reports that still exist
        self.branches: dict[int, int] = {}  # id -> project_id
        self.report_branch: dict[int, int] = {}  # report id -> branch id, when it names one
        self.archived: set[tuple[str, int]] = set()  # (kind, id) of archived entities

    # ----------------------------------------------------------------------------------------
    # reference data
    def add_organization(self, org_id: int) -> None:
        self.organizations[org_id] = Organization()

    def add_project(self, project_id: int, org_id: int, visibility: str = "public") -> None:
        if visibility not in VISIBILITIES:
            raise ValueError(visibility)
        self.projects[project_id] = Project(org_id, visibility)

    def add_testbed(self, testbed_id: int, project_id: int) -> None:
        self.testbeds[testbed_id] = project_id

    def add_benchmark(self, benchmark_id: int, project_id: int) -> None:
        self.benchmarks[benchmark_id] = project_id

    def add_measure(self, measure_id: int, project_id: int) -> None:
        self.measures[measure_id] = project_id

    def org_of_project(self, project_id: int) -> int:
        return self.projects[project_id].organization_id

    def set_visibility(self, project_id: int, visibility: str) -> None:
        if visibility not in VISIBILITIES:
            raise ValueError(visibility)
        self.projects[project_id].visibility = visibility

    def set_deleted(self, project_id: int, deleted: bool) -> None:
        self.projects[project_id].deleted = deleted

    # ----------------------------------------------------------------------------------------
    # ingest
    def add_report(
        self, report_id: int, project_id: int, testbed_id: int, created: datetime
    ) -> None:
        self.reports[report_id] = Report(project_id, testbed_id, utc(created))

    def add_metric(
        self, report_id: int, benchmark_id: int, measure_id: int, variant: str = EMPTY_VARIANT
    ) -> None:
        """A metric row of ``report_id`` for ``(benchmark_id, variant, measure_id)``: records the
        activity in the period containing the report's ``created`` (recording that period if
        needed)."""
        report = self.reports[report_id]
        org = self.organizations[self.org_of_project(report.project_id)]
        period = self._period_for(org, report.created)
        if period not in org.periods:
            org.periods.append(period)
            org.periods.sort()
        series = (report.testbed_id, benchmark_id, variant, measure_id)
        org.activity.append(Activity(series, report.project_id, report.created, report_id))

    # ----------------------------------------------------------------------------------------
    # deletes
    def delete_report(self, report_id: int) -> None:
        """The report and its metrics go; the activity they recorded stays."""
        del self.reports[report_id]

    def delete_testbed(self, testbed_id: int) -> None:
        del self.testbeds[testbed_id]
        self._drop(lambda a: a.series[0] == testbed_id)
        self.reports = {k: r for k, r in self.reports.items() if r.testbed_id != testbed_id}

    def delete_benchmark(self, benchmark_id: int) -> None:
        del self.benchmarks[benchmark_id]
        self._drop(lambda a: a.series[1] == benchmark_id)

    def delete_variant(self, benchmark_id: int, variant: str) -> None:
        self._drop(lambda a: a.series[1] == benchmark_id and a.series[2] == variant)

    def delete_measure(self, measure_id: int) -> None:
        del self.measures[measure_id]
        self._drop(lambda a: a.series[3] == measure_id)

    def delete_project(self, project_id: int) -> None:
        del self.projects[project_id]
        for table in (self.testbeds, self.benchmarks, self.measures):
            for key in [k for k, p in table.items() if p == project_id]:
                del table[key]
        self.reports = {k: r for k, r in self.reports.items() if r.project_id != project_id}
        self.branches = {k: p for k, p in self.branches.items() if p != project_id}
        self._drop(lambda a: a.project_id == project_id)

    # ----------------------------------------------------------------------------------------
    # branches and archiving: neither is part of a series and neither changes a count (the
    # same series reported on several branches is one series; an archived testbed, benchmark
    # or measure that still reports is counted)
    def add_branch(self, branch_id: int, project_id: int) -> None:
        self.branches[branch_id] = project_id

    def branches_of(self, project_id: int) -> list[int]:
        return sorted(b for b, p in self.branches.items() if p == project_id)

    def set_report_branch(self, report_id: int, branch_id: int) -> None:
        self.report_branch[report_id] = branch_id

    def delete_branch(self, branch_id: int) -> None:
        """The branch and its reports go (a cascade); the activity they recorded stays."""
        del self.branches[branch_id]
        for report in [r for r, b in self.report_branch.items() if b == branch_id]:
            del self.report_branch[report]
            self.reports.pop(report, None)

    def set_archived(self, kind: str, entity_id: int, archived: bool) -> None:
        if archived:
            self.archived.add((kind, entity_id))
        else:
            self.archived.discard((kind, entity_id))

    def _drop(self, doomed: Callable[[Activity], bool]) -> None:
        for org in self.organizations.values():
            org.activity = [a for a in org.activity if not doomed(a)]

    # ----------------------------------------------------------------------------------------
    # billing periods
    def period_for(self, org_id: int, t: datetime) -> Period:
        """The billing period of ``org_id`` containing ``t``."""
        return self._period_for(self.organizations[org_id], utc(t))

    @staticmethod
    def _period_for(org: Organization, t: datetime) -> Period:
        for start, end in org.periods:
            if start <= t < end:
                return start, end
        if org.config is not None and t >= org.config.anchor:
            start, end = org.config.cell(t)
        else:
            start, end = calendar_month(t)
        for p_start, p_end in org.periods:
            if p_end <= t and p_end > start:
                start = p_end
            if p_start > t and p_start < end:
                end = p_start
        return start, end

    def set_billing_period(self, org_id: int, start: datetime, end: datetime) -> None:
        """Configure anchor and interval, then re-bucket: split the recorded period strictly
        containing ``start``; ``[start, end)`` replaces what was recorded there; after ``end``,
        the recorded periods are the intervals of the new schedule that hold activity (those
        that hold none are not recorded)."""
        start, end = utc(start), utc(end)
        org = self.organizations[org_id]
        org.config = BillingConfig.from_bounds(start, end)
        periods = [p for p in _split(org.periods, start) if p[0] < start]
        periods.append((start, end))
        periods += self._later_cells(org, end)
        org.periods = sorted(periods)

    def billing_period_cuts(self, org_id: int, start: datetime, end: datetime) -> list[datetime]:
        """Every time at which ``set_billing_period(org_id, start, end)`` may cut a recorded
        period: its bounds and those of the intervals of its schedule after ``end`` that hold
        activity."""
        start, end = utc(start), utc(end)
        org = self.organizations[org_id]
        cells = self._later_cells(org, end, BillingConfig.from_bounds(start, end))
        return sorted({start, end, *(b for cell in cells for b in cell)})

    @staticmethod
    def _later_cells(
        org: Organization, end: datetime, config: BillingConfig | None = None
    ) -> list[Period]:
        config = config or org.config
        assert config is not None
        return sorted({config.cell(a.created) for a in org.activity if a.created >= end})

    def backfill(self) -> None:
        """Backfill rebuilds from metrics merged with recorded history: nothing the model holds
        changes."""

    def split_is_exact(self, org_id: int, x: datetime) -> bool:
        """Whether the database can split at ``x`` exactly: every series active on both sides of
        ``x`` within the recorded period strictly containing it has its bounds next to ``x`` (the
        latest activity before, the earliest at/after) held by a report that still exists."""
        org = self.organizations[org_id]
        containing = [p for p in org.periods if p[0] < x < p[1]]
        if not containing:
            return True
        (p_start, p_end) = containing[0]
        by_series: dict[Series, list[Activity]] = {}
        for a in org.activity:
            if p_start <= a.created < p_end:
                by_series.setdefault(a.series, []).append(a)
        for acts in by_series.values():
            before = [a for a in acts if a.created < x]
            after = [a for a in acts if a.created >= x]
            if not before or not after:
                continue
            last_before = max(a.created for a in before)
            first_after = min(a.created for a in after)
            if not any(a.created == last_before and a.report_id in self.reports for a in before):
                return False
            if not any(a.created == first_after and a.report_id in self.reports for a in after):
                return False
        return True

    # ----------------------------------------------------------------------------------------
    # reads
    def latest_activity(self, org_id: int) -> datetime | None:
        acts = self.organizations[org_id].activity
        return max((a.created for a in acts), default=None)

    def last_seen(self, org_id: int) -> dict[Series, tuple[int, datetime]]:
        """Every live series of the organization: (project, greatest created ever recorded)."""
        out: dict[Series, tuple[int, datetime]] = {}
        for a in self.organizations[org_id].activity:
            old = out.get(a.series)
            if old is None or a.created > old[1]:
                out[a.series] = (a.project_id, a.created)
        return out

    def _counted(self, project_id: int, visibility: str | None) -> bool:
        project = self.projects[project_id]
        if project.deleted:
            return False
        return visibility is None or project.visibility == visibility

    def count_active(
        self, org_id: int, start: datetime, end: datetime, visibility: str | None = None
    ) -> int:
        return sum(
            1
            for project_id, seen in self.last_seen(org_id).values()
            if start <= seen < end and self._counted(project_id, visibility)
        )

    def periods(self, org_id: int) -> list[tuple[datetime, datetime, int]]:
        """Recorded periods, ordered, with their usage."""
        return [
            (start, end, self.period_usage(org_id, start))
            for start, end in self.organizations[org_id].periods
        ]

    def current_period(self, org_id: int, now: datetime) -> Period:
        return self.period_for(org_id, now)

    def _period_starting(self, org_id: int, period_start: datetime | None, now: datetime | None):
        if period_start is None:
            if now is None:
                raise ValueError("the current period needs `now`")
            return self.period_for(org_id, now)
        for start, end in self.organizations[org_id].periods:
            if start == period_start:
                return start, end
        return None

    def period_series(
        self, org_id: int, period_start: datetime | None = None, now: datetime | None = None
    ) -> list[SeriesRow]:
        """Series active in the period starting at ``period_start`` (None: the one containing
        ``now``), with the min and max created of their activity within it, sorted."""
        period = self._period_starting(org_id, period_start, now)
        if period is None:
            return []
        start, end = period
        bounds: dict[Series, tuple[int, datetime, datetime]] = {}
        for a in self.organizations[org_id].activity:
            if not start <= a.created < end or not self._counted(a.project_id, None):
                continue
            old = bounds.get(a.series)
            if old is None:
                bounds[a.series] = (a.project_id, a.created, a.created)
            else:
                bounds[a.series] = (old[0], min(old[1], a.created), max(old[2], a.created))
        return sorted(
            SeriesRow(project, *series, first, last)
            for series, (project, first, last) in bounds.items()
        )

    def period_usage(
        self, org_id: int, period_start: datetime | None = None, now: datetime | None = None
    ) -> int:
        return len(self.period_series(org_id, period_start, now))

    # ----------------------------------------------------------------------------------------
    def describe(self, org_ids: Iterable[int] | None = None) -> str:
        """A readable dump of the state that matters to the SQL reads."""
        lines = []
        for org_id in org_ids if org_ids is not None else sorted(self.organizations):
            org = self.organizations[org_id]
            lines.append(f"organization {org_id}: config {org.config}")
            for start, end in org.periods:
                lines.append(f"  period [{start.isoformat()}, {end.isoformat()})")
            for a in sorted(org.activity, key=lambda a: (a.created, a.series, a.report_id)):
                gone = "" if a.report_id in self.reports else " (report deleted)"
                lines.append(
                    f"  activity series={a.series} project={a.project_id} "
                    f"created={a.created.isoformat()} report={a.report_id}{gone}"
                )
        for project_id, p in sorted(self.projects.items()):
            lines.append(
                f"project {project_id}: org {p.organization_id} {p.visibility}"
                f"{' soft-deleted' if p.deleted else ''}"
            )
        return "\n".join(lines)


def _split(periods: list[Period], x: datetime) -> list[Period]:
    out: list[Period] = []
    for start, end in periods:
        if start < x < end:
            out += [(start, x), (x, end)]
        else:
            out.append((start, end))
    return out
