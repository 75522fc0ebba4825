"""The hub's health page: what ``hub status`` says, as one markdown artifact the Prefect UI shows.

Pure rendering of plain data (``PageData``): testable without a server. Looked at in Prefect 3.9's UI
(headless Chromium): tables and code blocks render; HTML tags are stripped; mermaid stays a code block;
an SVG data-URI image renders. The pictures are text bar charts in code blocks: they read the same in
the UI, in the artifact's raw view and in a test. Levels are words, not emoji (a browser without an emoji
font shows boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flows.status_model import _ago

MARK = {"ok": "ok", "warn": "**WARN**", "fail": "**FAIL**"}
BAR_WIDTH = 40


@dataclass
class PageData:
    report: dict[str, Any]  # flows.status.Report.as_dict()
    now: datetime
    freshness: list[dict[str, Any]] = field(default_factory=list)
    partitions: list[dict[str, Any]] = field(default_factory=list)  # name, quarter, rows, bytes
    archives: list[dict[str, Any]] = field(default_factory=list)
    throughput: list[dict[str, Any]] = field(default_factory=list)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ") if value not in (None, "") else "—"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return out + [""]


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""


def bars(items: list[tuple[str, float]], unit: str = "") -> list[str]:
    """A text bar chart in a code block: one line per item, bars scaled to the largest value."""
    if not items:
        return []
    top = max((v for _, v in items), default=0) or 1
    width = max(len(label) for label, _ in items)
    lines = [f"{label:<{width}} {'█' * max(round(v / top * BAR_WIDTH), 1 if v else 0):<{BAR_WIDTH}} {v:,.0f}{unit}"
             for label, v in items]  # fmt: skip
    return ["```text", *lines, "```", ""]


def _when(now: datetime, ts: datetime | None) -> str:
    return f"{ts:%Y-%m-%d %H:%M} UTC ({_ago(now, ts)})" if ts else "never"


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next((c for c in report["checks"] if c["name"] == name), {"data": {}, "level": "ok", "detail": ""})


def render(page: PageData) -> str:
    r, now = page.report, page.now
    out = [f"# Hub health: {MARK[r['level']]}", "",
           f"Instance `{r['instance']}` · generated {now:%Y-%m-%d %H:%M} UTC · exit code {r['exit_code']} · "
           "the same checks as `hub status`", ""]  # fmt: skip
    out += _table(["check", "level", "reason"], [[c["name"], MARK[c["level"]], c["detail"]] for c in r["checks"]])
    out += ["## Freshness of each entity", ""]
    out += _table(
        ["entity", "last successful run", "last full snapshot"],
        [[f["entity"], _when(now, f["last_success"]), _when(now, f["last_full"])] for f in page.freshness],
    ) if page.freshness else ["No run recorded yet.", ""]  # fmt: skip
    out += _partitions(page)
    out += _throughput(page)
    out += _backups(now, _check(r, "backups"))
    failed = _check(r, "failed_snapshots")["data"].get("items", [])
    out += ["## Open failed snapshots", ""]
    out += _table(["#", "entity", "status", "attempts", "level", "note"],
                  [[f["id"], f["entity"], f["status"], f["attempts"], MARK[f["level"]], f["note"]] for f in failed]
                  ) if failed else ["None open.", ""]  # fmt: skip
    locks = _check(r, "locks")["data"].get("items", [])
    out += ["## Locks", ""]
    out += _table(["lock", "holder", "level", "note"], [[lk["lock"], lk["holder"], MARK[lk["level"]], lk["note"]]
                                                       for lk in locks])  # fmt: skip
    return "\n".join(out).rstrip() + "\n"


def _partitions(page: PageData) -> list[str]:
    out = ["## Partitions of order_items", ""]
    where = {a["partition"]: a for a in page.archives}
    rows = [[p["name"], f"{p['rows']:,}", _size(p["bytes"]), _cell(where[p["name"]]["path"]) if p["name"] in where
             else "—"] for p in page.partitions]  # fmt: skip
    live = {p["name"] for p in page.partitions}
    rows += [
        [f"{a['partition']} (dropped)", f"{a['rows']:,}", "—", a["path"]]
        for a in page.archives
        if a["dropped_at"] and not a["restored_at"] and a["partition"] not in live
    ]
    if not rows:
        return [*out, "No partitions yet (`hub partitions`).", ""]
    rows.sort(key=lambda r: r[0])  # by quarter, dropped ones in their place
    out += _table(["quarter", "rows", "size", "archived where"], rows)
    out += ["Rows per quarter (live partitions; from the statistics, not counted):", ""]
    return out + bars([(p["name"], p["rows"]) for p in page.partitions if p["quarter"]])


def _throughput(page: PageData) -> list[str]:
    runs = [t for t in page.throughput if t["seconds"]]
    if not runs:
        return ["## Apply throughput (lines per second)", "", "No finished run yet.", ""]
    out = [f"## Apply throughput of the last {len(runs)} run{'s' * (len(runs) != 1)} (lines per second)", ""]
    labels = [(f"#{t['id']} {t['entity']} {t['source']}{' full' if t['full'] else ''}", t["lines"] / t["seconds"])
              for t in runs]  # fmt: skip
    return out + bars(labels, "/s")


def _backups(now: datetime, check: dict[str, Any]) -> list[str]:
    d = check["data"]

    def ts(key: str) -> datetime | None:
        return datetime.fromisoformat(d[key]) if d.get(key) else None

    out = ["## Backups", ""]
    out += _table(["backups here", "newest verified", "newest restore-tested", "level", "note"],
                  [[d.get("backups", 0), _when(now, ts("newest_verified")), _when(now, ts("newest_restore_tested")),
                    MARK[check["level"]], check["detail"]]])  # fmt: skip
    return out
