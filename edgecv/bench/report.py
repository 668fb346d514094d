"""Bench output: rich table, JSON (schema ``edgecv.bench/2``, written and read back by the contract,
:mod:`edgecv.contracts.bench`), Markdown, Pareto PNG."""

from __future__ import annotations

from pathlib import Path

from edgecv.contracts.bench import write_bench
from edgecv.data.metrics import weak_message
from edgecv.targets.budget import budget_text
from edgecv.utils import atomic_path, stderr_console, write_text_atomic


def _mb(n: int | None) -> str:
    return f"{n / 1e6:.2f} MB" if n else "-"


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def top1_cell(acc: dict | None) -> str:
    """Top-1 with its interval (``96.94 [94.6-98.3]``); a result without intervals shows the figure alone."""
    if not acc:
        return "-"
    ci = acc.get("top1_ci")
    return f"{acc['top1']:.2f}" + (f" [{ci[0]:.1f}-{ci[1]:.1f}]" if ci else "")


def _vs_best(a: dict) -> str:
    d = a.get("accuracy_decision")
    if not d or not a.get("accuracy"):
        return "-"
    if d["verdict"] in (None, "reference"):
        return d["verdict"] or ("keeps" if d["keeps"] else "refused") + " (unpaired)"
    lo, hi = d["ci_pt"]
    return f"{d['verdict']} ({d['diff_pt']:+.2f} pt [{lo:+.2f}, {hi:+.2f}])" if d["verdict"] != "equal" else "equal"


def accuracy_line(result: dict) -> str | None:
    """What the top-1 figures are of: the images, the interval, and the rule of the "vs best" column."""
    s = result.get("accuracy_set")
    if not s:
        return None
    tol = result["settings"].get("accuracy_tolerance")
    return (f"top-1 % [{s['confidence'] * 100:g} % Wilson interval] on {s['n']} images of {s['data']}; vs best: "
            f"paired on the same images against the most accurate artifact (exact McNemar, interval of the difference)"
            + (f", tolerance {tol:g} pt" if tol is not None else ""))


def rows_for_table(result: dict) -> list[dict]:
    out = []
    for a in result["artifacts"]:
        p = a["primary"] or {}
        acc = a["accuracy"]
        if a["status"] != "ok":
            verdict = a["status"]
        else:
            verdict = a["verdict"]["label"] if a["verdict"] else "-"
        rec = [t for t, r in (result.get("recommended") or {}).items() if r and r["name"] == a["name"]]
        out.append({
            "artifact": a["name"] + (" *" if rec else ""),
            "format": a["format"], "precision": a["precision"], "runtime": a["runtime"] or "-",
            "size": _mb(a["size_bytes"]),
            # "!": no better than always answering the commonest class (data.metrics.baseline_check)
            "top1": top1_cell(acc) + (" !" if acc and acc.get("learned") is False else ""), "vs_best": _vs_best(a),
            # balanced accuracy (mean per-class recall) / macro-F1; absent in results written before they existed
            "bal_f1": f"{_f(acc.get('balanced_acc'))} / {_f(acc.get('macro_f1'))}" if acc else "-",
            "p50": _f(p.get("p50_ms"), "{:.3f}"), "p90": _f(p.get("p90_ms"), "{:.3f}"),
            "fps": _f(p.get("fps"), "{:.1f}"),
            "thr_fps": (f"{a['throughput']['fps']:.1f} @b{a['throughput']['batch']}" if a.get("throughput") else "-"),
            "verdict": verdict,
        })
    return out


COLUMNS = [("artifact", "artifact"), ("format", "format"), ("precision", "precision"), ("runtime", "runtime"),
           ("size", "size"), ("top1", "top-1 % [CI]"), ("vs_best", "vs best"), ("bal_f1", "bal. acc / macro-F1 %"), ("p50", "p50 ms"), ("p90", "p90 ms"), ("fps", "fps"),
           ("thr_fps", "throughput"), ("verdict", "budget")]


def _budget_text(result: dict) -> str:
    return budget_text(result.get("budget"), source=True)


def _measured_on(result: dict) -> list[str]:
    return sorted({a["measured_on"] for a in result["artifacts"] if a.get("measured_on")})


def _cmp_text(c: dict) -> str:
    sp = c.get("int8_speedup")
    how = (f"INT8 is {sp:.2f}x faster than FP32" if c["faster"] == "int8" else
           f"INT8 is not faster than FP32 ({sp:.2f}x)") if sp else "INT8 vs FP32"
    but = f", but {c['deploy_reason']}" if c.get("deploy_reason") else ""
    return (f"{how} (p50 {c['int8_p50_ms']:.3f} vs {c['fp32_p50_ms']:.3f} ms, {c['format']}){but}: "
            f"deploy {c['deploy']} on this runtime")


def best_int8_text(c: dict) -> str:
    sp = c["speedup"]
    how = f"{sp:.2f}x faster than" if c["faster"] else f"not faster than ({sp:.2f}x)"
    return (f"best INT8 artifact {c['int8']} ({c['int8_runtime']}, p50 {c['int8_p50_ms']:.3f} ms) is {how} "
            f"{c['onnx_fp32']} on onnxruntime (p50 {c['onnx_fp32_p50_ms']:.3f} ms), same run")


def print_table(result: dict, console=None) -> None:

    from rich.markup import escape
    from rich.table import Table

    con = console or stderr_console(160)
    s = result["settings"]
    t = Table(title=f"edgecv bench: {result['bundle']}  target={result['target'] or '-'}  "
                    f"budget: {_budget_text(result)}", title_justify="left")
    for _, head in COLUMNS:
        t.add_column(head, justify="right" if head in ("size", "top-1 % [CI]", "bal. acc / macro-F1 %", "p50 ms", "p90 ms",
                                                      "fps") else "left",
                     overflow="fold")
    for r in rows_for_table(result):
        t.add_row(*[escape(str(r[k])) for k, _ in COLUMNS])
    con.print(t)
    for a in result["artifacts"]:
        if a["status"] != "ok":
            con.print(f"{escape(a['name'])}: {a['status']}: {escape(str(a['reason']))}")
        for n in a.get("notes", []):
            if not n.startswith(("INT8 is not faster", "latency is a host proxy")):  # shown once below / in labels
                con.print(f"{escape(a['name'])}: {escape(n)}")
        if (a.get("accuracy") or {}).get("learned") is False:  # the "!" of its top-1: never recommended
            con.print(f"{escape(a['name'])}: [red]{escape(weak_message(a['accuracy']['baseline'], 'accuracy-set'))}[/]")
    if accuracy_line(result):
        con.print(escape(accuracy_line(result)))
    con.print(f"latency at threads={s['threads'][0]}, batch={s['batches'][0]}; "
              f">= {s['min_runs']} runs and >= {s['min_time_s']:g}s per config, {s['rounds']} interleaved rounds")
    for m in _measured_on(result):
        con.print(f"measured on: {escape(m)}")
    for c in result.get("precision_comparison") or []:
        con.print(f"{escape(c['runtime'])}: {_cmp_text(c)}")
    if result.get("int8_vs_onnx_fp32"):
        con.print(escape(best_int8_text(result["int8_vs_onnx_fp32"])))
    for tname, rec in (result.get("recommended") or {}).items():
        con.print(f"recommended for {tname}: " + (f"[bold]{escape(rec['name'])}[/] ({escape(rec['reason'])})" if rec
                                                   else "none (no artifact passes the budget and keeps accuracy)"))
    for n in result["notes"]:
        con.print(f"note: {escape(n)}")


def to_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"### edgecv bench: `{Path(result['bundle']).name}` (target {result['target'] or '-'})", "",
             f"- budget: {_budget_text(result)}",
             f"- settings: threads {s['threads']}, batches {s['batches']}, >= {s['min_runs']} runs and "
             f">= {s['min_time_s']:g}s per config, {s['rounds']} interleaved rounds, warm-up {s['warmup']}",
             f"- accuracy data: {s.get('data') or 'not measured'}"]
    if accuracy_line(result):
        lines.append(f"- {accuracy_line(result)}")
    for m in _measured_on(result):
        lines.append(f"- measured on: {m}")
    lines += ["", "| " + " | ".join(h for _, h in COLUMNS) + " |",
              "|" + "|".join("---:" if k in ("size", "top1", "bal_f1", "p50", "p90", "fps") else "---"
                             for k, _ in COLUMNS) + "|"]
    for r in rows_for_table(result):
        lines.append("| " + " | ".join(str(r[k]).replace("|", "\\|") for k, _ in COLUMNS) + " |")
    lines.append("")
    for c in result.get("precision_comparison") or []:
        lines.append(f"- {c['runtime']}: {_cmp_text(c)}")
    if result.get("int8_vs_onnx_fp32"):
        lines.append(f"- {best_int8_text(result['int8_vs_onnx_fp32'])}")
    for tname, rec in (result.get("recommended") or {}).items():
        lines.append(f"- recommended for **{tname}**: " + (f"`{rec['name']}` ({rec['reason']})" if rec else "none"))
    for n in result["notes"]:
        lines.append(f"- note: {n}")
    for a in result["artifacts"]:
        if a["status"] != "ok":
            lines.append(f"- `{a['name']}`: {a['status']}: {a['reason']}")
        for n in a.get("notes", []):
            if not n.startswith(("INT8 is not faster", "latency is a host proxy")):
                lines.append(f"- `{a['name']}`: {n}")
    lines.append("")
    lines.append("`*` = recommended. `(host proxy)` = measured on this host, not on the target hardware.")
    return "\n".join(lines) + "\n"


def write_json(result: dict, path: str) -> None:
    """The bench result as JSON ('-' = stdout), schema-checked: :func:`edgecv.contracts.bench.write_bench`."""
    write_bench(result, path)


def write_markdown(result: dict, path: str) -> None:
    write_text_atomic(path, to_markdown(result))


def _pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower latency, higher accuracy)."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in idx:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def write_plot(result: dict, path: str) -> None:
    """Accuracy (top-1) vs p50 latency, one point per measured artifact, Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arts = [a for a in result["artifacts"] if a["status"] == "ok" and a["primary"]]
    have_acc = all(a["accuracy"] for a in arts) and arts
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    runtimes = sorted({a["runtime"] for a in arts})
    markers = dict(zip(runtimes, "osD^v<>P*X", strict=False))
    pts = []
    for a in arts:
        x = a["primary"]["p50_ms"]
        y = a["accuracy"]["top1"] if have_acc else (a["size_bytes"] or 0) / 1e6
        pts.append((x, y))
        color = {"fp32": "tab:blue", "fp16": "tab:green", "int8": "tab:red"}.get(a["precision"], "tab:gray")
        ax.scatter([x], [y], c=color, marker=markers.get(a["runtime"], "o"), s=60, zorder=3,
                   edgecolors="black", linewidths=0.5)
        ax.annotate(a["name"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if have_acc and len(pts) > 1:
        f = _pareto(pts)
        ax.plot([pts[i][0] for i in f], [pts[i][1] for i in f], "--", color="gray", zorder=2, label="Pareto front")
    for rt in runtimes:
        ax.scatter([], [], marker=markers[rt], c="white", edgecolors="black", label=rt)
    for p, c in (("fp32", "tab:blue"), ("fp16", "tab:green"), ("int8", "tab:red")):
        if any(a["precision"] == p for a in arts):
            ax.scatter([], [], marker="s", c=c, label=p)
    b = result.get("budget")
    if b and b["metric"] == "p90_ms":
        ax.axvline(b["limit"], color="tab:orange", linestyle=":", label=f"p90 budget {b['limit']:g} ms")
    proxy = any(a["host_proxy"] for a in arts)
    s = result["settings"]
    ax.set_xlabel(f"p50 latency, ms (batch {s['batches'][0]}, {s['threads'][0]} thread(s))"
                  + (" [host proxy]" if proxy else ""))
    ax.set_ylabel("top-1 accuracy, %" if have_acc else "size, MB (accuracy not measured)")
    hosts = _measured_on(result)
    ax.set_title(f"edgecv bench: {Path(result['bundle']).name} (target {result['target'] or '-'})\n"
                 + (hosts[0][:95] if hosts else ""), fontsize=9)
    xs = [p[0] for p in pts]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.grid(True, alpha=0.3, which="both")
    if arts:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
