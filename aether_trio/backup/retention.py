"""Which backups a retention policy keeps (pure): the newest `last`, the newest of each of the
last `daily` UTC days, the newest of each of the last `weekly` ISO weeks (Monday to Sunday, UTC),
and always the newest verified one, so a prune can never leave only unproven backups."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import attrs

__all__ = ["Candidate", "to_keep"]


@attrs.frozen
class Candidate:
    id: str
    created_at: float
    verified: bool


def _day(ts: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).date()


def _week(day: datetime.date) -> datetime.date:
    return day - datetime.timedelta(days=day.weekday())


def to_keep(
    backups: Sequence[Candidate], now: float, *, last: int, daily: int, weekly: int
) -> set[str]:
    newest_first = sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)
    keep = {b.id for b in newest_first[:last]}
    today = _day(now)
    days: set[datetime.date] = set()
    weeks: set[datetime.date] = set()
    first_day = today - datetime.timedelta(days=daily - 1)
    first_week = _week(today) - datetime.timedelta(weeks=weekly - 1)
    for backup in newest_first:
        day = _day(backup.created_at)
        if daily and first_day <= day <= today and day not in days:
            days.add(day)
            keep.add(backup.id)
        week = _week(day)
        if weekly and first_week <= week <= _week(today) and week not in weeks:
            weeks.add(week)
            keep.add(backup.id)
    verified = next((b for b in newest_first if b.verified), None)
    if verified is not None:
        keep.add(verified.id)
    return keep
