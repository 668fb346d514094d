"""``edgecv gate``: a CI regression gate on latency and accuracy that is trustworthy on a noisy machine.

Why not compare two stored numbers: on shared CI runners the same model measures anywhere from 0.7x to 1.5x of
an earlier figure. So the gate measures **baseline and candidate in the same process, interleaved**, and decides
on their **ratio** with a confidence interval.

Latency decision (per matched artifact pair)
--------------------------------------------
1. Rounds. A round is one short block of calls of each model (>= ``block_runs`` calls and >= ``block_time_s``),
   in alternating order (A B, then B A, ...) so that slow drift cancels. The round statistic is the block median
   (``--metric p50``) or block 90th percentile (``p90``); the round ratio is ``r_i = stat(candidate_i) /
   stat(baseline_i)``. Both blocks of a round ran within ~0.2 s of each other, so they saw the same machine
   load: the ratio cancels most of the noise that ruins absolute numbers.
2. Session pairs. The rounds are spread over ``sessions`` (default 4) independent pairs of runtime sessions:
   for every pair both models are loaded afresh (load order alternating), get a fresh input (one array shared by
   both when the shapes match) and are warmed up. Reason: the memory layout of a session (arena and buffer
   addresses, their cache/4K-aliasing interplay with the input) shifts the latency of a small model by a few
   per cent, and by 13 % for a 20 us model on a CI runner, **consistently for the life of the session**. Rounds
   on one pair cannot see that; a gate on one pair "proved" two identical models 13 % apart (CI 1.127-1.131).
3. Point estimate ``R`` = exp(20 % trimmed mean of all log r_i) (robust to a round or a pair hit by a burst).
   Confidence interval ``[lo, hi]``: two-stage percentile bootstrap (session pairs with replacement, then rounds
   within each drawn pair; whole rounds keep the A/B pairing), ``confidence`` = 95 %, 4000 resamples, fixed
   seed (the decision is reproducible given the samples).
4. With ``limit = 1 + max_latency_regression`` (default 1.10):

   * ``hi <= limit``  -> **pass** (the candidate is shown not to be more than 10 % slower);
   * ``lo >  limit``  -> **regression** (it is shown to be more than 10 % slower);
   * otherwise the interval straddles the limit: **inconclusive** -> more session pairs are measured (half
     the initial number at a time) up to ``max_rounds`` rounds in all; if it is still inconclusive at the cap,
     ``on_inconclusive`` decides: ``point`` (default: regression iff ``R > limit``), ``fail`` (strict: regression) or ``pass`` (lenient).
     The verdict then carries ``inconclusive: true`` and the label says so.

   Consequence: identical models (true ratio 1.0) pass whenever the interval is narrower than +-10 %, which the
   interleaving gives even on a loaded 2-core machine; a candidate >= ~15 % slower fails. A candidate exactly
   at the limit is a coin flip under any rule, by construction. See benchmarks/RESULTS.md "Gate (issue 6)".

Accuracy decision: top-1 of both artifacts through the same runtime on the same ``--data`` images, compared
image by image with the bench rule (:func:`edgecv.targets.policy.call_against`): regression iff the exact
McNemar test on the images only one of them gets right shows the candidate worse *and* the measured drop
reaches ``max_accuracy_drop`` points (the interval of the drop is reported with it). On 200 images a 0.5-pt drop (one image) is "not distinguishable" and
passes; on 10,000 a real 0.5-pt drop fails with its interval. A stored baseline is compared paired when its bench
JSON holds predictions of the same images, else unpaired (drop > ``max_accuracy_drop``). Without ``--data`` the
accuracy check is skipped with a note.

Stored baseline: ``--baseline bench.json`` (from ``edgecv bench --json``) is accepted but is **less reliable**:
the baseline was measured at another time (possibly another machine) so the ratio cannot cancel machine noise.
The candidate is measured in rounds (one session) and compared with the stored number with a widened limit
``(1 + max_latency_regression) * stored_noise`` (default noise factor 1.5, the spread observed on shared
runners); the verdict is labelled ``stored baseline, low reliability``.

Same task only: baseline and candidate must have the same class names, preprocessing (both bundles) and input
shape (every matched pair); otherwise the gate refuses (exit 2, one line saying what differs) before measuring.

Modules: :mod:`.config` (settings), :mod:`.stats` (trimmed mean, bootstrap interval, decision),
:mod:`.measure` (session plan, interleaved rounds, session pairs), :mod:`.compat` (what the baseline and
candidate must share), :mod:`.run` (matching artifacts, the gate itself), :mod:`.report` (the table).
"""

import importlib

# name -> the module defining it; imported on first use, so that reading the settings (edgecv.bench.gate.config,
# which the CLI does to build its flags) loads no runtime and no numpy
_EXPORTS = {"SCHEMA": "config", "GateConfig": "config", "SessionPairs": "measure", "paired_rounds": "measure",
            "session_plan": "measure", "stored_rounds": "measure", "print_gate": "report", "match_pairs": "run",
            "run_gate": "run", "LatencyDecision": "stats", "classify": "stats", "decide": "stats",
            "ratio_ci": "stats", "trimmed_mean": "stats"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
