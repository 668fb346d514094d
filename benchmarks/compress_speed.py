"""Compress speed (issue 16): the same compress with the live teacher vs the teacher's stored soft labels.

Every variant is one ``edgecv compress`` (all three stages, the same seed and epochs) run in its own process,
one after the other, each with a fresh cache folder (so the cached variant pays for building its soft labels);
``reused`` runs again on the cache the previous variant built (a rerun, another student, ``--resume``).
The teacher's forward time is measured inside the run (a timer around ``KDLoss.teacher_logits``, the one
place the teacher runs, live or while building the cache).

``--step-probe``: the student's training step alone (forward + backward + AdamW at the run's batch and size),
eager vs ``channels_last`` vs ``torch.compile`` (its compile time shown separately), and the teacher's forward
eager vs ``torch.compile``; bf16 autocast is probed only where the CPU has AVX512-BF16/AMX.

    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/compress_speed.py \\
        --data ~/.cache/edgecv/hymenoptera --teacher T.pt --img-size 224 --variants live,cached,reused --step-probe
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("distill", "prune", "quantize")


def child(args: argparse.Namespace) -> None:
    """One compress in this process; prints a JSON record (run.json's figures + the teacher's forward time)."""
    sys.path.insert(0, str(REPO))
    from edgecv.autotune.run import compress
    from edgecv.compress.config import CompressConfig
    from edgecv.compress.distill import KDLoss

    spent = [0.0, 0]
    real = KDLoss.teacher_logits

    def timed(self, x):
        t0 = time.perf_counter()
        out = real(self, x)
        spent[0] += time.perf_counter() - t0
        spent[1] += x.shape[0]
        return out

    KDLoss.teacher_logits = timed
    cfg = CompressConfig(**json.loads(args.child))
    t0 = time.perf_counter()
    run = compress(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    n_train = run["teacher_cache"].get("images")
    print(json.dumps({"wall_s": wall, "teacher_s": spent[0], "teacher_images": spent[1], "n_train": n_train,
                      "teacher_cache": run["teacher_cache"], "teacher_runtime": run["teacher_runtime"],
                      "teacher_top1": run["teacher"]["val_top1"],
                      "stages": {s: {k: run["stages"][s].get(k) for k in ("wall_s", "val_top1", "ptq_top1", "epochs")}
                                 for s in STAGES}}))


# today's behaviour (live fp32 teacher, contiguous, decode every epoch) and each option switched on
VARIANTS = {
    "live": {"teacher_cache": "off", "channels_last": False, "decode_cache": "off", "teacher_precision": "fp32"},
    "live+decode": {"teacher_cache": "off", "channels_last": False},
    "live+cl": {"teacher_cache": "off", "channels_last": True, "decode_cache": "off"},
    "cached-contig": {"channels_last": False},
    "cached": {"channels_last": True},
    "reused": {"channels_last": True},  # the cache the previous variant built (a rerun / another student)
}


def run_variant(name: str, base: dict, cache: Path, out: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from edgecv.compress.config import CompressConfig

    known = CompressConfig.__dataclass_fields__
    over = {k: v for k, v in VARIANTS[name].items() if k in known}  # (decode_cache: where the flag exists)
    cfg = {**base, **over, "out": str(out / name)}
    env = {**os.environ, "EDGECV_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    log = out / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        p = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], stdout=subprocess.PIPE, stderr=err,
                           text=True, env=env, cwd=str(REPO))
    if p.returncode != 0:
        raise SystemExit(f"{name}: compress failed\n{log.read_text()[-3000:]}")
    rec = json.loads(p.stdout.strip().splitlines()[-1])
    rec["process_s"] = time.perf_counter() - t0
    rec["variant"] = name
    return rec


def step_probe(arch: str, teacher_path: str, size: int, batch: int, steps: int, student_compile: bool) -> list[dict]:
    """Student step and teacher forward: eager / channels_last / torch.compile (and bf16 where it exists)."""
    sys.path.insert(0, str(REPO))
    import torch

    from edgecv.compress.softlabels import cpu_bf16
    from edgecv.models.checkpoint import load_checkpoint
    from edgecv.models.registry import create_model

    def timeit(fn, n):
        fn()  # warm-up (and, for compiled code, the compile)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    rows = []
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))
    bf16, why = cpu_bf16()
    bf16_opts = ("bf16", "channels_last+bf16") if bf16 else ()
    for opt in ("eager", "channels_last") + (("compile",) if student_compile else ()) + bf16_opts:
        torch.manual_seed(0)
        m = create_model(arch, 2).train()
        xin = x
        if "channels_last" in opt:
            m = m.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        fwd = torch.compile(m) if opt == "compile" else m
        o = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)  # as training.loop builds it

        def step(fwd=fwd, o=o, xin=xin, opt=opt):
            o.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in opt):
                out = fwd(xin)
            torch.nn.functional.cross_entropy(out.float(), y).backward()
            o.step()

        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        per = timeit(step, steps)
        rows.append({"what": f"student {arch} step", "option": opt, "ms_per_batch": per * 1e3,
                     "first_call_s": first, "images_s": batch / per})
    opts = ["eager", "channels_last", "compile", "channels_last+compile"] + list(bf16_opts)
    for opt in opts:
        teacher = load_checkpoint(teacher_path).build().eval()
        xt = x
        if "channels_last" in opt:
            teacher = teacher.to(memory_format=torch.channels_last)
            xt = x.contiguous(memory_format=torch.channels_last)
        fwd = torch.compile(teacher) if "compile" in opt else teacher

        @torch.no_grad()
        def tf(fwd=fwd, opt=opt, xt=xt):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in opt):
                fwd(xt)

        t0 = time.perf_counter()
        tf()
        first = time.perf_counter() - t0
        per = timeit(tf, steps)
        rows.append({"what": "teacher forward", "option": opt, "ms_per_batch": per * 1e3, "first_call_s": first,
                     "images_s": batch / per})
    if not bf16:
        rows.append({"what": "bf16 autocast", "option": why})
    return rows


def table(recs: list[dict]) -> str:
    """One row per variant. ``total``: the whole compress call (loading, the teacher's val top-1, building the
    caches and the three stages); ``setup``: total minus the stages."""
    live = next((r for r in recs if r["variant"] == "live"), None)
    lines = ["| variant | setup s | distill s | prune s | QAT s | total s | vs live | KD images/s | teacher s (share) "
             "| soft labels | distill top-1 | prune top-1 | PTQ top-1 | QAT top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return f"{v:.2f}" if isinstance(v, int | float) else "-"

    for r in recs:
        st, total = r["stages"], r["wall_s"]
        setup = total - sum(st[s]["wall_s"] or 0 for s in STAGES)
        ratio = f"{total / live['wall_s']:.2f}x" if live else "-"
        n = r["n_train"] or next((x["n_train"] for x in recs if x["n_train"]), None)  # (the live run has no cache)
        kd_ips = n * st["distill"]["epochs"] / st["distill"]["wall_s"] if n else None
        tc = r["teacher_cache"]
        cache = f"K={tc['views']}, {tc['size_bytes'] / 1e6:.2f} MB, {'built' if tc['built'] else 'reused'}" \
            if tc.get("used") else "off (live teacher)"
        lines.append(f"| {r['variant']} | {f(setup)} | {f(st['distill']['wall_s'])} | {f(st['prune']['wall_s'])} | "
                     f"{f(st['quantize']['wall_s'])} | {f(total)} | {ratio} | {f(kd_ips)} | "
                     f"{f(r['teacher_s'])} ({100 * r['teacher_s'] / total:.0f}%) | {cache} | "
                     f"{f(st['distill']['val_top1'])} | {f(st['prune']['val_top1'])} | {f(st['quantize']['ptq_top1'])} | "
                     f"{f(st['quantize']['val_top1'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data")
    ap.add_argument("--teacher")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--student", default="mobilenet_v3_small")
    ap.add_argument("--epochs", default="10,6,3", help="KD,prune,QAT epochs [10,6,3: the defaults]")
    ap.add_argument("--batch-size", type=int, default=None, help="compress --batch-size [compress's default: 64, smaller for a small dataset]")
    ap.add_argument("--teacher-cache", default="auto", help="the cached variants' --teacher-cache [auto]")
    ap.add_argument("--variants", default="live,cached,reused")
    ap.add_argument("--subset", default=None, help="a class-stratified subset of the data: TRAIN,VAL images per class")
    ap.add_argument("--step-probe", action="store_true")
    ap.add_argument("--probe-steps", type=int, default=10)
    ap.add_argument("--probe-student-compile", action="store_true", help="also torch.compile the student (~2 min)")
    ap.add_argument("--seed", type=int, default=0, help="compress --seed of every variant [0]")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--table-from", default=None, help="print the table of a --json-out file and exit")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.table_from:
        return print(table(json.loads(Path(args.table_from).read_text())["runs"]))
    data = str(Path(args.data).expanduser())
    work = Path(tempfile.mkdtemp(prefix="edgecv-compress-speed-"))
    if args.subset:
        data = str(make_subset(Path(data), work / "subset", *(int(v) for v in args.subset.split(","))))
    ekd, epr, eqat = (int(v) for v in args.epochs.split(","))
    base = {"teacher": str(Path(args.teacher).expanduser()), "data": data, "student": args.student,
            "img_size": args.img_size, "epochs_kd": ekd, "epochs_prune": epr, "epochs_qat": eqat,
            "teacher_cache": args.teacher_cache, "seed": args.seed}
    if args.batch_size:
        base["batch_size"] = args.batch_size
    recs, cache = [], None
    for name in [v for v in args.variants.split(",") if v]:
        if name != "reused" or cache is None:
            cache = work / f"cache-{name}"
        print(f"[compress_speed] {name} ...", file=sys.stderr, flush=True)
        rec = run_variant(name, base, cache, work / "runs")
        recs.append(rec)
        print(f"[compress_speed] {name}: {rec['wall_s']:.1f}s, QAT top-1 {rec['stages']['quantize']['val_top1']}",
              file=sys.stderr, flush=True)
    if recs:
        print(table(recs))
    probe = step_probe(args.student, base["teacher"], args.img_size, 64, args.probe_steps,
                       args.probe_student_compile) if args.step_probe else []
    for r in probe:
        if "ms_per_batch" in r:
            print(f"{r['what']:>28} {r['option']:>14}: {r['ms_per_batch']:8.1f} ms/batch of 64 "
                  f"({r['images_s']:7.1f} img/s), first call {r['first_call_s']:.1f}s")
        else:
            print(f"{r['what']:>28}: {r['option']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"base": base, "runs": recs, "step_probe": probe}, indent=1))


def make_subset(src: Path, dst: Path, n_train: int, n_val: int) -> Path:
    """The first N train / M val images of every class (sorted names), as symlinks: a reduced, stratified run."""
    for split, n in (("train", n_train), ("val", n_val)):
        for cdir in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            d = dst / split / cdir.name
            d.mkdir(parents=True, exist_ok=True)
            for f in sorted(cdir.iterdir())[:n]:
                (d / f.name).symlink_to(f.resolve())
    return dst


if __name__ == "__main__":
    main()
