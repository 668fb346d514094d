"""The gate's table on stderr."""

from __future__ import annotations


def _fmt_pct(x: float) -> str:
    return f"{(x - 1) * 100:+.1f}%"


def _row_cells(r: dict) -> list[str]:
    from rich.markup import escape

    lat, acc = r.get("latency"), r.get("accuracy")
    if r["status"] != "ok":
        return [escape(r["name"]), "-", "-", "-", "-", "-", "-", "-", "-",
                escape(f"{r['verdict']} ({r['status']}: {r['reason']})")]
    lv = "-"
    if lat:
        lv = lat["verdict"] + (" (inconclusive)" if lat["inconclusive"] else "")
    if acc and "drop" in acc:
        at = f"{acc['baseline_top1']:.2f} -> {acc['candidate_top1']:.2f} (n={acc['n']})"
        call = acc.get("call") or {}
        how = call.get("verdict") or "unpaired"
        ci = f" [{call['ci_pt'][0]:+.2f}, {call['ci_pt'][1]:+.2f}]" if call.get("ci_pt") else ""
        av = f"{acc['verdict']} ({how}: {-acc['drop']:+.2f} pt{ci})" + \
            (", no better than the commonest class" if acc.get("candidate_learned") is False else "")
    else:
        at, av = "-", (acc or {}).get("skipped", "not checked")
    return [escape(r["name"]), f"{lat['baseline_ms']:.3f}" if lat else "-",
            f"{lat['candidate_ms']:.3f}" if lat else "-",
            f"{lat['ratio']:.3f} ({_fmt_pct(lat['ratio'])})" if lat else "-",
            f"[{lat['ci_low']:.3f}, {lat['ci_high']:.3f}]" if lat else "-",
            str(lat["rounds"]) if lat else "-", lv, at, escape(av),
            "[red]REGRESSION[/]" if r["verdict"] == "regression" else "[green]pass[/]"]


def print_gate(result: dict, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgecv.utils import stderr_console

    con = console or stderr_console(170)
    s = result["settings"]
    t = Table(title=f"edgecv gate: {s['metric']} latency ratio candidate/baseline (limit +{s['max_latency_regression'] * 100:g}%), "
                    f"top-1 drop (tolerance {s['max_accuracy_drop']:g} pt, paired)", title_justify="left")
    for h in ("artifact", "baseline ms", "candidate ms", "ratio", f"{s['confidence'] * 100:g}% CI", "rounds",
              "latency", "top-1 base -> cand", "accuracy", "verdict"):
        t.add_column(h, justify="right" if h.endswith(("ms", "ratio", "rounds")) else "left")
    for r in result["artifacts"]:
        t.add_row(*_row_cells(r))
    con.print(t)
    con.print(f"measured on: {escape(result['host'])}, {s['threads']} thread(s); baseline: {result['baseline_kind']}"
              f" (reliability {result['reliability']})")
    for r in result["artifacts"]:
        if (r.get("accuracy") or {}).get("label"):
            con.print(f"{escape(r['name'])} top-1: candidate is {escape(r['accuracy']['label'])}")
    for n in result["notes"]:
        con.print(f"note: {escape(n)}")
    con.print("[bold green]gate: PASS[/]" if result["passed"]
              else f"[bold red]gate: REGRESSION[/] in {', '.join(result['regressions'])}")
