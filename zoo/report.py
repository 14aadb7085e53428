"""The report builder: report.md from an experiment's claim, tables, figures and verdict (STYLE 12).

An experiment returns a ``Report``: its title, the claim it tests (the seed's words), body parts
(markdown text, ``table(...)`` output, ``figure(...)`` references) that state what was measured,
and a ``verdict``: ``{"reproduced": "yes" | "no" | "not tested", "criterion": str, "numbers": {...}}``.
The settings section is rendered from the run's own config.json, never retyped in prose, and the
verdict also goes into metrics.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("yes", "no", "not tested")


def markdown_table(rows: list[dict], columns: list[str] | None = None, fmt: str = "{:.4g}") -> str:
    """A markdown table from a list of dicts; floats formatted with `fmt`."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: fmt.format(v) if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


table = markdown_table


def figure(name: str, caption: str = "") -> str:
    """A figure reference for the report body; `caption` (optional) goes under it in italics."""
    return f"![{name.rsplit('.', 1)[0]}]({name})" + (f"\n\n*{caption}*" if caption else "")


def verdict(reproduced: bool | None, criterion: str, **numbers: Any) -> dict[str, Any]:
    """The verdict of a claim: True -> "yes", False -> "no", None -> "not tested" (with the criterion
    that decides it and the numbers it was decided on)."""
    outcome = "not tested" if reproduced is None else ("yes" if reproduced else "no")
    return {"reproduced": outcome, "criterion": criterion, "numbers": numbers}


@dataclass
class Report:
    title: str
    claim: str
    body: list[str] = field(default_factory=list)  # markdown parts, in order
    finding: str = ""  # the finding in one paragraph, with its numbers
    verdict: dict[str, Any] | None = None


@dataclass
class Result:
    """What an experiment's run returns: the metrics (metrics.json) and the report (report.md)."""

    metrics: dict[str, Any]
    report: Report


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def settings(config_json: dict[str, Any]) -> str:
    """The settings section: the resolved config tree of config.json as one table of dotted keys."""
    rows = [{"setting": f"`{k}`", "value": f"`{v}`"} for k, v in _flatten(config_json.get("config", {}))]
    return markdown_table(rows) if rows else "(no settings)"


def render(report: Report, config_json: dict[str, Any]) -> str:
    """report.md: title, how to rerun, the claim, what was measured, the finding and verdict, settings."""
    name, preset = config_json.get("experiment", "?"), config_json.get("preset", "?")
    seed, device = config_json.get("seed", 0), config_json.get("device", "cpu")
    parts = [f"# {report.title}",
             f"*Experiment `{name}`, preset `{preset}`, seed {seed}, device {device}; rerun with "
             f"`zoo run {name} --config config.json` (the settings below).*",
             "## The seed's claim", report.claim.strip(),
             "## What this run measured", *[p.strip() for p in report.body if p and p.strip()]]
    if report.finding or report.verdict:
        v = report.verdict
        line = (f" Criterion: {v['criterion']}. **Reproduced: {v['reproduced']}.**" if v else "")
        parts += ["## Finding", f"{report.finding.strip()}{line}".strip()]
    parts += ["## Settings", settings(config_json)]
    return "\n\n".join(parts) + "\n"
