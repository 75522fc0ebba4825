"""The business rules of the customer metrics: cancelled statuses and the RFM segment map.

Both can be overridden at runtime in the ``settings`` table (read by ``flows.metrics``):

``cancelled_statuses``
    JSON array of Shoptet order status ids left out of the metrics, e.g. ``[-4, 7]``. Status −4
    (Shoptet's "Stornována") is always included. Changing it makes the next run a full recompute.

``rfm_segments``
    JSON array of rules evaluated in order, first match wins; a customer no rule matches is ``Other``::

        [{"segment": "Champions", "r": [4, 5], "fm": [4, 5]}, ...]

    ``r`` is the recency score, ``fm`` the average of the frequency and monetary scores (1, 1.5, …, 5);
    both bounds are inclusive, between 1 and 5.

R, F and M are quintiles (``ntile(5)`` over all customers; 5 = most recent / most orders / most
revenue). The default map (``DEFAULT_SEGMENT_RULES``) places the ten classic segments on the usual
R × FM grid. Rules in order:

    ==================  ======  ========
    segment             R       FM
    ==================  ======  ========
    Champions           4–5     4–5
    Loyal Customers     3–5     3–5
    Can't Lose Them     1       4–5
    At Risk             1–2     3–5
    Potential Loyalist  4–5     2–2.5
    New Customers       5       1–1.5
    Promising           4       1–1.5
    Need Attention      3       2–2.5
    About To Sleep      2–3     1–2.5
    Lost                1       1–2.5
    ==================  ======  ========

which gives every cell of the grid one segment (tests check this table against the SQL):

    ===  ===============  ==================  ===============  ===============
    R    FM 1–1.5         FM 2–2.5            FM 3–3.5         FM 4–5
    ===  ===============  ==================  ===============  ===============
    5    New Customers    Potential Loyalist  Loyal Customers  Champions
    4    Promising        Potential Loyalist  Loyal Customers  Champions
    3    About To Sleep   Need Attention      Loyal Customers  Loyal Customers
    2    About To Sleep   About To Sleep      At Risk          At Risk
    1    Lost             Lost                At Risk          Can't Lose Them
    ===  ===============  ==================  ===============  ===============

Overlaps (Champions inside Loyal Customers, Can't Lose Them inside At Risk) are resolved by order, which
is why a first-match list and not the R ``rfm`` package's table (where later rules overwrite earlier
ones, so its Champions never occur).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

CANCELLED_STATUS = -4  # Shoptet's built-in "cancelled"
DEFAULT_CANCELLED_STATUSES: tuple[int, ...] = (CANCELLED_STATUS,)
UNMATCHED_SEGMENT = "Other"
SETTING_CANCELLED = "cancelled_statuses"
SETTING_SEGMENTS = "rfm_segments"


class MetricsSettingsError(ValueError):
    """A business setting of the customer metrics is malformed; the message says how to fix it."""


@dataclass(frozen=True)
class SegmentRule:
    segment: str
    r: tuple[Decimal, Decimal]
    fm: tuple[Decimal, Decimal]

    @classmethod
    def of(cls, segment: str, r: Sequence[float], fm: Sequence[float]) -> SegmentRule:
        return cls(segment, (Decimal(str(r[0])), Decimal(str(r[1]))), (Decimal(str(fm[0])), Decimal(str(fm[1]))))

    def as_json(self) -> dict[str, Any]:
        return {"segment": self.segment, "r": [_num(x) for x in self.r], "fm": [_num(x) for x in self.fm]}


DEFAULT_SEGMENT_RULES: tuple[SegmentRule, ...] = (
    SegmentRule.of("Champions", (4, 5), (4, 5)),
    SegmentRule.of("Loyal Customers", (3, 5), (3, 5)),
    SegmentRule.of("Can't Lose Them", (1, 1), (4, 5)),
    SegmentRule.of("At Risk", (1, 2), (3, 5)),
    SegmentRule.of("Potential Loyalist", (4, 5), (2, 2.5)),
    SegmentRule.of("New Customers", (5, 5), (1, 1.5)),
    SegmentRule.of("Promising", (4, 4), (1, 1.5)),
    SegmentRule.of("Need Attention", (3, 3), (2, 2.5)),
    SegmentRule.of("About To Sleep", (2, 3), (1, 2.5)),
    SegmentRule.of("Lost", (1, 1), (1, 2.5)),
)


def _num(x: Decimal) -> int | float:
    return int(x) if x == x.to_integral_value() else float(x)


# --- parsing settings values ------------------------------------------------------------------------


def parse_cancelled_statuses(value: Any) -> tuple[int, ...]:
    """The stored list, plus −4, sorted and deduplicated. None (key absent) means the default."""
    if value is None:
        return DEFAULT_CANCELLED_STATUSES
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise MetricsSettingsError(
            f"setting {SETTING_CANCELLED!r} must be a JSON array of status ids (integers), e.g. [-4, 7]; "
            f"got {str(value)[:80]}"
        )
    return tuple(sorted({CANCELLED_STATUS, *value}))


def parse_segment_rules(value: Any) -> tuple[SegmentRule, ...]:
    """Rules from the settings JSON. None (key absent) means the default map."""
    if value is None:
        return DEFAULT_SEGMENT_RULES
    example = '[{"segment": "Champions", "r": [4, 5], "fm": [4, 5]}, …]'
    if not isinstance(value, list) or not value:
        raise MetricsSettingsError(f"setting {SETTING_SEGMENTS!r} must be a non-empty JSON array like {example}")
    return tuple(_parse_rule(i, item, example) for i, item in enumerate(value))


def _parse_rule(i: int, item: Any, example: str) -> SegmentRule:
    where = f"setting {SETTING_SEGMENTS!r}, rule {i + 1}"
    if not isinstance(item, dict) or set(item) != {"segment", "r", "fm"}:
        raise MetricsSettingsError(f"{where}: each rule needs exactly the keys segment, r and fm, like {example}")
    segment = item["segment"]
    if not isinstance(segment, str) or not segment.strip() or len(segment) > 100:
        raise MetricsSettingsError(f"{where}: segment must be a non-empty name of at most 100 characters")
    bounds = {}
    for axis in ("r", "fm"):
        pair = item[axis]
        ok = (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)
            and 1 <= pair[0] <= pair[1] <= 5
        )
        if not ok:
            raise MetricsSettingsError(f"{where}: {axis} must be [low, high] with 1 <= low <= high <= 5")
        bounds[axis] = pair
    return SegmentRule.of(segment.strip(), bounds["r"], bounds["fm"])


def rules_as_json(rules: Iterable[SegmentRule]) -> list[dict[str, Any]]:
    """The rules in the settings format (``hub settings set rfm_segments '<this>'``)."""
    return [rule.as_json() for rule in rules]


# --- SQL ----------------------------------------------------------------------------------------------


def segment_case(rules: Sequence[SegmentRule], r: sql.Composable, fm: sql.Composable) -> tuple[sql.Composed, dict]:
    """``CASE WHEN r BETWEEN … AND fm BETWEEN … THEN <segment> … ELSE 'Other' END`` and its parameters.

    The values travel as named parameters (``seg0_r_lo`` …): rules come from an operator-editable
    setting and never become SQL text.
    """
    whens, params = [], {}
    for i, rule in enumerate(rules):
        p = f"seg{i}"
        params.update(
            {
                f"{p}_r_lo": rule.r[0],
                f"{p}_r_hi": rule.r[1],
                f"{p}_fm_lo": rule.fm[0],
                f"{p}_fm_hi": rule.fm[1],
                f"{p}_name": rule.segment,
            }
        )
        whens.append(
            sql.SQL(
                "WHEN {r} BETWEEN {rl}::numeric AND {rh}::numeric AND {fm} BETWEEN {fl}::numeric AND {fh}::numeric "
                "THEN {name}::text"
            ).format(
                r=r,
                fm=fm,
                rl=sql.Placeholder(f"{p}_r_lo"),
                rh=sql.Placeholder(f"{p}_r_hi"),
                fl=sql.Placeholder(f"{p}_fm_lo"),
                fh=sql.Placeholder(f"{p}_fm_hi"),
                name=sql.Placeholder(f"{p}_name"),
            )
        )
    params["seg_unmatched"] = UNMATCHED_SEGMENT
    case = sql.SQL("CASE {} ELSE {}::text END").format(sql.SQL(" ").join(whens), sql.Placeholder("seg_unmatched"))
    return case, params


def segment_table(rules: Sequence[SegmentRule]) -> tuple[sql.Composed, dict]:
    """A scalar subquery: the rules' CASE evaluated once per (R, F + M) cell, as a 45-element text[].

    Per customer the segment is then one array subscript (``segment_of``) instead of up to ten CASE
    branches of numeric comparisons: 500k customers × 40 comparisons cost ~0.5 s of a 1 s budget.
    """
    r, fm2 = sql.Identifier("r"), sql.Identifier("fm2")
    case, params = segment_case(rules, r, sql.SQL("({}::numeric / 2)").format(fm2))
    return sql.SQL(
        "(SELECT array_agg({case} ORDER BY {r}, {fm2}) FROM generate_series(1, 5) AS {r}, "
        "generate_series(2, 10) AS {fm2})"
    ).format(case=case, r=r, fm2=fm2), params


def segment_of(table: sql.Composable, r: sql.Composable, f: sql.Composable, m: sql.Composable) -> sql.Composed:
    """The cell of ``segment_table`` for scores r, f, m (FM = (f + m) / 2)."""
    return sql.SQL("({})[({} - 1) * 9 + {} + {} - 1]").format(table, r, f, m)


def segment_grid(conn: psycopg.Connection, rules: Sequence[SegmentRule]) -> dict[tuple[int, Decimal], str]:
    """Every (R, FM) cell through the same SQL the runs use: for docs and tests."""
    table, params = segment_table(rules)
    r, f, m = sql.Identifier("r"), sql.Identifier("f"), sql.Identifier("m")
    rows = conn.execute(
        sql.SQL(
            "SELECT {r}, ({f} + {m})::numeric / 2, {seg} FROM generate_series(1, 5) AS {r}, "
            "generate_series(1, 5) AS {f}, generate_series(1, 5) AS {m}"
        ).format(r=r, f=f, m=m, seg=segment_of(table, r, f, m)),
        params,
    ).fetchall()
    return {(row[0], row[1]): row[2] for row in rows}
