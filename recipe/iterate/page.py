"""`<run_dir>/iterate.html`: the loop's figures per round on one page that opens offline (the
images are inside it), beside iterate.md's tables. Drawn after every step from iterate.json's
data; a figure that cannot be drawn says why on the page, and the page never fails the loop."""

from __future__ import annotations

import base64
import html
from pathlib import Path

FILENAME = "iterate.html"
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
         "text-align:right}img{max-width:100%}.missing{color:#a00}")


def _series(doc: dict, key: str) -> tuple[list, list]:
    evals = [entry.get("eval", {}) for entry in doc["rounds"]]
    return [e.get(key) for e in evals], [e.get(f"{key}_se") for e in evals]


def figures(doc: dict) -> list[tuple[str, object]]:
    """(title, matplotlib Figure) of the page, from iterate.json's rounds."""
    from recipe import plots

    rounds = [entry["round"] for entry in doc["rounds"]]
    evals = [entry.get("eval", {}) for entry in doc["rounds"]]
    series = {"reward": ([e.get("mean") for e in evals], [e.get("se") for e in evals])}
    if any(e.get("stated_right") is not None for e in evals):
        series["stated answer right"] = _series(doc, "stated_right")
    if any(e.get("adherence") is not None for e in evals):
        series["instruction adherence"] = _series(doc, "adherence")
    if any(e.get("gradable_rate") is not None for e in evals):
        series["gradable rate (format)"] = _series(doc, "gradable_rate")
        series["accuracy among gradable (skill)"] = _series(doc, "accuracy_gradable")
    chance = next((e["chance"] for e in evals if e.get("chance") is not None), None)
    out = [("Reward, format and skill per round", plots.rounds_decomposition(rounds, series, chance))]
    heat = heatmap_data(doc)
    if heat is not None:
        out.append(("Where it trained and elsewhere: gains over round 0", plots.gain_heatmap(*heat)))
    names = sorted({f for e in evals for f in (e.get("families") or {})})
    if names:
        families = {f: [(e.get("families") or {}).get(f, {}).get("accuracy_gradable") for e in evals] for f in names}
        out.append(("Accuracy among gradable replies per task family", plots.families_by_round(rounds, families)))
    train = [entry.get("train_rollouts", {}).get("mean_response_tokens") for entry in doc["rounds"]]
    out.append(("Mean response length", plots.response_tokens(rounds, [e.get("mean_response_tokens") for e in evals],
                                                              train)))
    return out


MEASURES = (("reward", "reward"), ("stated_right", "stated answer right"), ("adherence", "instruction adherence"))


def heatmap_data(doc: dict) -> tuple | None:
    """(rows, rounds, gains, SEs) of iterate.json's cross_eval: one row per suite and measure, one
    column per trained round; None before round 1 has an eval."""
    suites = (doc.get("cross_eval") or {}).values()
    rounds = [entry["round"] for entry in doc["rounds"]
              if entry["round"] > 0 and any(str(entry["round"]) in suite["rounds"] for suite in suites)]
    rows, gains, ses = [], [], []
    for name, suite in (doc.get("cross_eval") or {}).items():
        for measure, label in MEASURES:
            cells = [(suite["rounds"].get(str(k)) or {}).get(measure) for k in rounds]
            if any(cells):
                where = "trained here" if name == "eval" else name
                rows.append(f"{suite['environment']} ({where}): {label}")
                gains.append([c["gain"] if c else None for c in cells])
                ses.append([c["se"] if c else None for c in cells])
    return (rows, rounds, gains, ses) if rows and rounds else None


def render(doc: dict, tables: str) -> str:
    from recipe import plots

    parts = []
    try:
        drawn = figures(doc)
    except Exception as exc:  # noqa: BLE001 (the page says so instead)
        drawn, parts = [], [f"<p class='missing'>figures not drawn: {html.escape(f'{type(exc).__name__}: {exc}')}</p>"]
    for title, figure in drawn:
        encoded = base64.b64encode(plots.png(figure)).decode("ascii")
        parts.append(f"<figure><h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{encoded}'></figure>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>gym-dpo iterate</title><style>{STYLE}"
            f"</style></head><body><h1>Iterative DPO</h1><p>Run folder <code>{html.escape(doc['run_dir'])}</code>, "
            f"updated {html.escape(doc['updated'])}.</p>{tables}{''.join(parts)}</body></html>\n")


def write(run_dir: Path, doc: dict, tables_markdown: str) -> Path | None:
    """The page, or None when matplotlib is not installed (the `local` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    body = f"<pre>{html.escape(tables_markdown)}</pre>"
    path = Path(run_dir) / FILENAME
    partial = path.with_name(f".{FILENAME}.partial")
    partial.write_text(render(doc, body), encoding="utf-8")
    partial.replace(path)
    return path
