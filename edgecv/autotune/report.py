"""The ``--student auto`` selection table (stderr)."""

from __future__ import annotations

from edgecv.bench.report import top1_cell
from edgecv.targets.budget import budget_text
from edgecv.targets.stats import CONFIDENCE


def print_selection(sel: dict, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgecv.utils import stderr_console

    con = console or stderr_console(200)
    ms = sel["measurement"]
    b = sel.get("budget")
    t = Table(title=f"edgecv compress --student auto: target {ms['target']} ({ms['runtime']}, {ms['threads']} thread(s), "
                    f"{ms['deploy_size']}px), budget {budget_text(b, hardware=False)}", title_justify="left")
    for col in ("candidate", "FP32 p50", "FP32 p90", "INT8 p50", "INT8 p90", "deploy", "probe top-1", "status", "reason"):
        t.add_column(col, justify="right" if ("p50" in col or "p90" in col or "top-1" in col) else "left",
                     overflow="fold")

    def f(d, k):
        return f"{d[k]:.3f}" if isinstance(d, dict) and d.get(k) is not None else ("err" if d else "-")

    for r in sel["candidates"]:
        t.add_row(escape(r["arch"]), f(r["fp32"], "p50_ms"), f(r["fp32"], "p90_ms"), f(r["int8"], "p50_ms"),
                  f(r["int8"], "p90_ms"), (r["deploy_precision"] or "-").upper(),
                  top1_cell({"top1": r["probe_top1"], "top1_ci": r.get("probe_top1_ci")})
                  if r.get("probe_top1") is not None else "-",
                  escape(r.get("status") or "-"), escape(r.get("reason") or ""))
    con.print(t)
    hosts = sorted({r["measured_on"] for r in sel["candidates"] if r.get("measured_on")})
    for h in hosts:
        con.print(f"latency in ms, batch 1, measured on: {escape(h)}")
    for r in sel["candidates"]:
        for p in ("fp32", "int8"):
            if isinstance(r.get(p), dict) and r[p].get("error"):
                con.print(f"{escape(r['arch'])} {p}: {escape(r[p]['error'])}")
    if sel.get("probe"):
        p = sel["probe"]
        con.print(f"probe: {p['epochs']} KD epoch(s) on {p['images']} training images at {p['img_size']}px, "
                  f"top-1 [{CONFIDENCE * 100:g} % Wilson interval] on the same {p['val_images']} val images, compared "
                  "image by image")
    if sel.get("chosen"):
        con.print(f"chosen: [bold]{escape(sel['chosen'])}[/]")
