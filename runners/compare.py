"""Comparing finished evaluations: ``lhopt compare`` (every evaluation against the first, task by
task, with paired intervals, and where a policy acts differently from its reference) and
``lhopt best-of`` (per task, whichever evaluation ends lowest, as an evaluation of its own).

Both read evaluation directories as ``lhopt eval`` writes them (or as published, gzipped) and
run nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lhopt_dsl import TABLE1_ROWS
from lhopt_dsl.evaluation.metrics import (
    evaluation_summary, format_estimate, format_summary, head_to_head, paired_comparison, render_table,
)  # fmt: skip
from lhopt_dsl.tasks.baselines import ADAMW_BASELINES

from .jobs import write_json
from .records import RECORD_VERSION, SCORES, EvaluationError, task_scores, unfloat
from .report import summarise


def load_output(out: Path) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """An evaluation directory's manifest and its finished task records, by task index."""
    out = Path(out)
    if not (out / "manifest.json").exists():
        raise EvaluationError(f"{out} is not an evaluation directory (no manifest.json): "
                              "pass an output directory of lhopt eval (its --out)")
    manifest = json.loads((out / "manifest.json").read_text())
    records: dict[int, dict[str, Any]] = {}
    # *.json as lhopt eval writes them; *.json.gz as published under results/evaluations/
    for path in sorted([*(out / "tasks").glob("*.json"), *(out / "tasks").glob("*.json.gz")]):
        try:
            text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            record = json.loads(text)
        except (json.JSONDecodeError, gzip.BadGzipFile, EOFError, UnicodeDecodeError):
            continue  # a torn write: that task is unfinished
        if not (isinstance(record, dict) and record.get("version") == RECORD_VERSION):
            continue  # another version's record: not comparable
        try:
            task_scores(record, "test"), task_scores(record, "valid")
            records[int(record["index"])] = record
        except (KeyError, TypeError, ValueError) as e:
            raise EvaluationError(f"{path} is not a task record of lhopt eval ({type(e).__name__}: {e})") from None
    return manifest, records


def _load_common(outs: list[Path]) -> tuple[list[tuple[dict[str, Any], dict[int, dict[str, Any]]]], list[int], list[str]]:
    """Finished evaluations, the indices of the tasks all of them finished (checked to be the same
    tasks, from the same initial hyperparameters), and a distinct label for each."""
    loaded = [load_output(o) for o in outs]
    sets = {m.get("set", "dev") for m, _ in loaded}
    if len(sets) > 1:
        raise EvaluationError(f"the evaluations ran on different task sets ({', '.join(sorted(sets))}): "
                              "compare dev with dev and test with test (lhopt eval --set)")  # fmt: skip
    initial = {m.get("initial") for m, _ in loaded}
    if len(initial) > 1:
        raise EvaluationError(f"the evaluations started from different initial hyperparameters "
                              f"({', '.join(sorted(map(str, initial)))}): "
                              "compare evaluations run with the same --initial")  # fmt: skip
    common = sorted(set.intersection(*(set(r) for _, r in loaded)))
    for i in common:
        ids = {r[i]["task_id"] for _, r in loaded}
        if len(ids) > 1:
            raise EvaluationError(f"task {i} is not the same task in every directory ({', '.join(sorted(ids))}): "
                                  "these evaluations sampled different distributions")  # fmt: skip
    if not common:
        raise EvaluationError("the evaluations have no finished task in common")
    labels = [Path(o).name or str(o) for o in outs]
    if len(set(labels)) < len(labels):
        labels = [str(o) for o in outs]
    return loaded, common, labels


def best_of(outs: list[Path], out: Path, *, by: str = "valid", score: str = "test", resamples: int = 2000,
            quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Per task, the record of whichever evaluation in ``outs`` ends with the lowest final ``by``
    loss, written to ``out`` as an evaluation of its own (``lhopt compare`` and the tables read it).

    With ``by="valid"`` this is the method chosen per task on its validation split, as the best
    AdamW run is: run with ``lhopt eval --schedule NAME`` for each of a set of schedules, it is that
    set tuned per task, the ceiling of a policy that imitates the set perfectly. ``by="test"``
    chooses on the split it is scored on (an optimistic bound, not a result). Only the tasks every
    evaluation finished are kept; ``out`` may hold only an earlier result of this function."""
    if by not in SCORES or score not in SCORES:
        raise EvaluationError(f"--by and --score must be one of {', '.join(SCORES)}; got '{by}', '{score}'")
    if len(outs) < 2:
        raise EvaluationError("best-of needs at least two evaluation directories")
    out = Path(out)
    if (out / "manifest.json").exists() and "best_of" not in json.loads((out / "manifest.json").read_text()):
        raise EvaluationError(f"{out} holds an evaluation of lhopt eval; pass another --out")
    loaded, common, labels = _load_common(outs)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    for f in (out / "tasks").glob("*.json"):  # an earlier selection's, perhaps from other directories
        f.unlink()
    chosen = dict.fromkeys(labels, 0)
    records = []
    for i in common:
        options = [r[i] for _, r in loaded]
        finals = [unfloat(o["policy"][by]) for o in options]
        k = min(range(len(options)), key=lambda j: (finals[j] if math.isfinite(finals[j]) else math.inf, j))
        record = {**options[k], "selected_from": labels[k]}
        chosen[labels[k]] += 1
        write_json(out / "tasks" / f"{i:05d}.json", record)
        records.append(record)
    first = loaded[0][0]
    digest = hashlib.sha256(" ".join(sorted(str(m.get("policy_sha256")) for m, _ in loaded)).encode()).hexdigest()
    manifest = {"policy": f"best of {len(outs)} by {by} loss", "policy_sha256": digest, "spec": first.get("spec"),
                "initial": first.get("initial"), "set": first.get("set", "dev"), "max_valid": first.get("max_valid"),
                "out": str(out), "best_of": {"by": by, "evaluations": [
                    {"dir": str(o), "policy": m.get("policy"), "chosen": chosen[label]}
                    for o, (m, _), label in zip(outs, loaded, labels)]}}  # fmt: skip
    write_json(out / "manifest.json", manifest)
    summary = summarise(records, score, resamples=resamples)
    summary["manifest"] = manifest
    (out / "table1.md").write_text(f"Per task the evaluation with the lowest final {by} loss, of {len(outs)}; "
                                   f"scored on the {score} split.\n\n{format_summary(summary, markdown=True)}\n")
    write_json(out / "results.json", summary)
    if not quiet:
        print(f"\n{len(records)} tasks finished in every evaluation; per task the one with the lowest final {by} loss, "
              f"scored on the {score} split\n")
        print(format_summary(summary))
        top = sorted(chosen.items(), key=lambda kv: -kv[1])
        print("\nchosen: " + ", ".join(f"{label} {n}" for label, n in top if n))
    return summary


def compare_outputs(outs: list[Path], score: str = "test", *, resamples: int = 2000) -> dict[str, Any]:
    """Every evaluation in ``outs`` against the first, on the tasks all of them finished.

    The tasks must be the same ones (same index, same task id, same initial hyperparameters):
    evaluations of one spec's evaluation distribution, or of specs that share it."""
    if len(outs) < 2:
        raise EvaluationError("compare needs at least two evaluation directories (the first is the reference)")
    if score not in SCORES:
        raise EvaluationError(f"--score must be one of {', '.join(SCORES)}; got '{score}'")
    loaded, common, labels = _load_common(outs)
    scores = [[task_scores(r[i], score) for i in common] for _, r in loaded]
    methods = {}
    for label, (manifest, _), ts in zip(labels, loaded, scores):
        o = evaluation_summary(ts, ADAMW_BASELINES, resamples=resamples)["overall"]
        methods[label] = {"policy": manifest.get("policy"), "policy_sha256": manifest.get("policy_sha256"),
                          **{k: o[k] for k in ("pairs_ge_2x", "best_ge_1x", "speedup_median", "speedup_geomean")},
                          "failed": o["policy_failed"]}  # fmt: skip
    comparisons, by_row = {}, {}
    for label, ts in zip(labels[1:], scores[1:]):
        comparisons[label] = paired_comparison(scores[0], ts, ADAMW_BASELINES, resamples=resamples)
        rows = list(dict.fromkeys([*(r for r in TABLE1_ROWS if any(t.row == r for t in ts)), *(t.row for t in ts)]))
        by_row[label] = {r: head_to_head([x.policy for x in scores[0] if x.row == r],
                                         [y.policy for y in ts if y.row == r]) for r in rows}  # fmt: skip
    deviations = {label: where_it_acts_differently([loaded[0][1][i] for i in common], [r[i] for i in common], score)
                  for label, (_, r) in zip(labels[1:], loaded[1:])}  # fmt: skip
    return {"reference": labels[0], "score": score, "tasks": len(common), "task_indices": common,
            "finished": {label: len(r) for label, (_, r) in zip(labels, loaded)},
            "methods": methods, "comparisons": comparisons, "by_row": by_row, "deviations": deviations}  # fmt: skip


def _same_values(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Equal plain data, floats equal to ``rel`` (records pass through JSON)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_values(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_values(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        fa, fb = unfloat(a), unfloat(b)
        return (math.isnan(fa) and math.isnan(fb)) or math.isclose(fa, fb, rel_tol=rel, abs_tol=0.0)
    return a == b


def first_difference(reference: dict[str, Any], candidate: dict[str, Any]) -> int | None:
    """The first decision at which ``candidate``'s run chose other hyperparameters (or another
    restart) than ``reference``'s on the same task, or None where it did exactly the same."""
    ref, cand = reference["policy"], candidate["policy"]
    steps = zip(ref["hparams"], cand["hparams"], ref.get("restarts", []), cand.get("restarts", []))
    for k, (h0, h1, r0, r1) in enumerate(steps):
        if not (_same_values(h0, h1) and _same_values(r0, r1)):
            return k
    if len(ref["hparams"]) != len(cand["hparams"]):
        return min(len(ref["hparams"]), len(cand["hparams"]))
    return None


def where_it_acts_differently(reference: list[dict[str, Any]], candidate: list[dict[str, Any]],
                              score: str = "test") -> dict[str, Any]:  # fmt: skip
    """By Table 1 row: on how many tasks the candidate's hyperparameters ever differ from the
    reference's, and the head-to-head of final losses where they differ and where they do not.

    With a fixed schedule as the reference this says whether a policy's wins come from where it
    leaves the schedule (they must: where it acts the same, the runs are the same runs)."""
    rows: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any], int | None]]] = {}
    for ref, cand in zip(reference, candidate):
        groups.setdefault(ref["row"], []).append((ref, cand, first_difference(ref, cand)))
    order = [r for r in TABLE1_ROWS if r in groups] + [r for r in groups if r not in TABLE1_ROWS]
    for row in [*order, "Overall"]:
        items = [x for r in order for x in groups[r]] if row == "Overall" else groups[row]
        loss = lambda rec: unfloat(rec["policy"][score])  # noqa: E731
        differ = [(a, b) for a, b, k in items if k is not None]
        same = [(a, b) for a, b, k in items if k is None]
        firsts = sorted(k / max(a["outer_steps"], 1) for a, _, k in items if k is not None)
        rows[row] = {
            "tasks": len(items), "differ": len(differ),
            "first_difference_progress_median": float(np.median(firsts)) if firsts else math.nan,
            "where_different": head_to_head([loss(a) for a, _ in differ], [loss(b) for _, b in differ]),
            "where_same": head_to_head([loss(a) for a, _ in same], [loss(b) for _, b in same]),
        }  # fmt: skip
    return rows


def format_comparison(result: dict[str, Any], markdown: bool = False) -> str:
    """The comparison as three tables: each evaluation on the common tasks, each against the
    reference (paired), and the head-to-head by Table 1 row."""
    head1 = ["evaluation", "pairs >=2x", "<=best@T", "speedup median", "speedup geomean", "non-finite"]
    est = format_estimate
    body1 = [[label, est(m["pairs_ge_2x"]), est(m["best_ge_1x"]), est(m["speedup_median"], suffix="x"),
              est(m["speedup_geomean"], suffix="x"), str(m["failed"])]
             for label, m in result["methods"].items()]  # fmt: skip
    head2 = ["vs " + result["reference"], "lower / tie / higher loss", "sign test p", "median log loss ratio",
             "pairs >=2x diff", "<=best@T diff", "speedup geomean ratio"]  # fmt: skip
    body2 = []
    for label, c in result["comparisons"].items():
        h, sp = c["head_to_head"], c["speedup_log_ratio"]["difference"]
        ratio = "-" if not math.isfinite(sp["value"]) else est(
            {"value": math.exp(sp["value"]), "ci": [math.exp(x) for x in sp["ci"]]}, suffix="x")
        body2.append([label, f"{h['wins']} / {h['ties']} / {h['losses']}", f"{h['sign_test_p']:.3g}",
                      est(c["log_loss_ratio"], 3, signed=True), est(c["pairs_ge_2x"]["difference"], signed=True),
                      est(c["best_ge_1x"]["difference"], signed=True),
                      ratio])  # fmt: skip
    rows = list(dict.fromkeys(r for b in result["by_row"].values() for r in b))
    head3 = ["row: lower / tie / higher", *result["by_row"]]
    body3 = [[r, *(("{wins}/{ties}/{losses}".format(**b[r]) if r in b else "-") for b in result["by_row"].values())]
             for r in rows]  # fmt: skip
    tables = [(head1, body1), (head2, body2), (head3, body3)]
    for label, dev in result.get("deviations", {}).items():
        head4 = [f"{label} vs {result['reference']}: row", "tasks", "acts differently", "first difference (progress)",
                 "lower / tie / higher where different", "where the same"]  # fmt: skip
        h2h = "{wins} / {ties} / {losses}".format
        body4 = [[row, str(d["tasks"]), str(d["differ"]),
                  "-" if not math.isfinite(d["first_difference_progress_median"]) else
                  f"{d['first_difference_progress_median']:.2f}",
                  h2h(**d["where_different"]), h2h(**d["where_same"])] for row, d in dev.items()]  # fmt: skip
        tables.append((head4, body4))
    out = [render_table(h, b, markdown) for h, b in tables]
    finished = ", ".join(f"{k} {v}" for k, v in result["finished"].items())
    note = (f"{result['tasks']} tasks finished in every evaluation (finished: {finished}), scored on the "
            f"{result['score']} split. Lower / tie / higher: tasks where the evaluation's final loss is below, equal "
            f"to or above {result['reference']}'s; sign test: the chance of so uneven a split if neither were better. "
            "Differences (evaluation - reference) and ratios with 95% paired bootstrap intervals over tasks. "
            "Acts differently: tasks where its hyperparameters or restarts differ from the reference's at some "
            "decision (first difference: the median fraction of the run before it).")
    return "\n\n".join(out) + "\n\n" + note
