"""Run a scaling sweep: train+evaluate every point (or AOT-compile it for a TPU topology), record
one row per point in ``results.jsonl``, then write ``results.csv``, the power-law fits and
``scaling.png``.

A point whose row exists with the same settings fingerprint and status ``ok`` is skipped
(resume); ``config.points`` names points to rerun from scratch. A point that fails is recorded
with its error and the sweep goes on; ``run_sweep`` returns the number of failed points.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path

from hllm_jax import sizes
from hllm_jax.sweep import points as points_lib
from hllm_jax.sweep.fit import power_law
from hllm_jax.sweep.plot import scaling_plot
from hllm_jax.sweep.results import Results, write_csv
from hllm_jax.sweep.topologies import GiB

TRAIN_COLUMNS = ("point", "params", "total_params", "steps", "item_tokens", "train_flops", "wall_seconds",
                 "final_loss", "valid/ndcg@200", "test/recall@10", "test/recall@200", "test/ndcg@10",
                 "test/ndcg@200", "status")
AOT_COLUMNS = ("point", "topology", "chips", "remat", "per_device_batch", "fits", "peak_gib", "hbm_gib",
               "model_tflops_per_chip", "roofline_step_s", "roofline_mfu", "compile_seconds", "status")


def sweep_points(c) -> list[points_lib.Point]:
    s = c.sweep
    return points_lib.make_points(tuple(s.item_sizes), tuple(s.get("user_sizes", ()) or ()), bool(s.get("grid")))


def point_run_config(c, point: points_lib.Point):
    rc = c.run.copy_and_resolve_references()
    rc.model.item_size, rc.model.user_size = point.item, point.user
    return rc


def _row_head(key: str, kind: str, point: points_lib.Point, fingerprint: str) -> dict:
    """The columns every results row starts with."""
    return dict(key=key, kind=kind, point=point.name, item_size=point.item, user_size=point.user,
                fingerprint=fingerprint, time=time.strftime("%Y-%m-%d %H:%M:%S"))


def _param_columns(counts: dict) -> dict:
    return dict(params=counts["non_embedding"], item_params=counts["item_non_embedding"],
                user_params=counts["user_non_embedding"], embedding_params=counts["embedding"],
                total_params=counts["total"])


# -- training points --------------------------------------------------------------------------
def train_point(rc, point, workdir: Path, fingerprint: str, fresh: bool) -> dict:
    """Train and evaluate one point (run config ``rc``) in ``workdir/points/NAME``, resuming a
    partial run there."""
    from hllm_jax.train.loop import train_and_evaluate
    pdir = workdir / "points" / point.name
    stamp = pdir / "fingerprint"
    if pdir.exists() and (fresh or not stamp.exists() or stamp.read_text() != fingerprint):
        shutil.rmtree(pdir)  # settings changed (or a rerun was asked for): start this point afresh
    pdir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    out = train_and_evaluate(rc, pdir)
    if out["status"] == "preempted":
        raise KeyboardInterrupt(f"point {point.name} preempted at step {out['step']}; rerun to resume")
    row = dict(steps=out["step"], wall_seconds=out["wall_seconds"], final_loss=out.get("final_mean_loss"),
               item_tokens=out["totals"]["item_tokens"], train_flops=out["totals"]["train_flops"],
               run_status=out["status"], workdir=str(pdir.relative_to(workdir)),  # relative to the sweep's
               **_param_columns(out["param_counts"]))
    if out["evals"]:
        row.update({k: v for k, v in out["evals"][-1].items() if k.startswith("valid/")})
    row.update({f"test/{k}": v for k, v in out.get("test", {}).items() if k != "cold_start"})
    return row


def run_train_sweep(c, workdir: Path, results: Results, rerun: set[str]) -> tuple[list[dict], int]:
    from tqdm.auto import tqdm
    pts = sweep_points(c)
    rows, failed = [], 0
    bar = tqdm(pts, desc="sweep", unit="point", dynamic_ncols=True, disable=not c.get("progress", True))
    for point in bar:
        bar.set_postfix(point=point.name)
        rc = point_run_config(c, point)
        fp = points_lib.fingerprint(rc.to_dict())
        done = results.done(point.name, fp)
        if done and point.name not in rerun:
            bar.write(f"{point.name}: done earlier (results.jsonl), skipped; --config.points={point.name} reruns it")
            rows.append(done)
            continue
        base = _row_head(point.name, "train", point, fp)
        try:
            row = dict(base, status="ok", **train_point(rc, point, workdir, fp, fresh=point.name in rerun))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - recorded; the other points still run
            failed += 1
            row = dict(base, status="error", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc()[-3000:])
            bar.write(f"{point.name}: FAILED: {type(e).__name__}: {e}")
        results.append(row)
        rows.append(row)
    bar.close()
    return rows, failed


def fit_rows(rows: list[dict], metrics, xs) -> dict:
    """Power-law fit of every metric against every x over the successful rows."""
    ok = [r for r in rows if r.get("status") == "ok"]
    fits = {}
    for m in metrics:
        for x in xs:
            pts = [(r[x], r[m]) for r in ok if r.get(x) is not None and r.get(m) is not None]
            if len(pts) >= 2:
                fits[f"{m}~{x}"] = dict(metric=m, x=x, **power_law(*zip(*pts)))
    return fits


# -- AOT points -------------------------------------------------------------------------------
def run_aot_sweep(c, workdir: Path, results: Results, rerun: set[str]) -> tuple[list[dict], int]:
    """For every point and topology: compile at each per-device batch (powers of two, ascending,
    until one does not fit), falling back to other remat policies only when none fits."""
    from tqdm.auto import tqdm
    from hllm_jax.sweep import aot, topologies
    names = [t for t in str(c.topology).split(",") if t.strip()]
    if not names:
        raise ValueError("AOT mode needs --config.topology=NAME[,NAME...] (e.g. v5p-128 or v5p:4x4x4)")
    topos = [topologies.resolve(n) for n in names]
    a = c.aot
    pts = sweep_points(c)
    rows, failed = [], 0
    jobs = [(p, t) for p in pts for t in topos]
    bar = tqdm(jobs, desc="aot", unit="point", dynamic_ncols=True, disable=not c.get("progress", True))
    for point, topo in bar:
        bar.set_postfix(point=point.name, topology=topo.jax_name)
        rc = point_run_config(c, point)
        vocab = int(a.vocab) or sizes.PUBLIC_VOCAB.get(sizes.canonical(point.item), 32000)
        # What a compile depends on (not the list of batches to try, nor the fallback policies).
        base_fp = dict(run=rc.to_dict(), vocab=vocab, negatives_per_device=int(a.negatives_per_device),
                       row_len=int(a.row_len), mesh_shape=list(a.mesh_shape), topology=topo.jax_name)
        policies = [rc.model.remat] + [p for p in a.remat_fallback if p != rc.model.remat]
        best = None
        for remat in policies:
            for b in a.per_device_batches:
                key = f"{point.name}|{topo.jax_name}|{remat}|b{b}"
                fp = points_lib.fingerprint(dict(base_fp, remat=remat, batch=b))
                row = results.done(key, fp, ("ok", "oom")) if point.name not in rerun else None
                if row is None:
                    bar.write(f"{point.name} on {topo.jax_name}: compiling, per-device batch {b}, remat {remat}")
                    row = dict(_row_head(key, "aot", point, fp),
                               **aot.compile_point(rc, topo, b, remat=remat, vocab=vocab,
                                                   negatives_per_device=int(a.negatives_per_device),
                                                   row_len=int(a.row_len), mesh_shape=tuple(a.mesh_shape)))
                    row.update(_param_columns(row.pop("param_counts")))
                    results.append(row)
                if row["status"] == "error":
                    failed += 1
                    bar.write(f"{point.name} on {topo.jax_name}: ERROR {row['error'][:300]}")
                    break
                if not row["fits"]:
                    bar.write(f"{point.name} on {topo.jax_name}: per-device batch {b} does not fit "
                              f"({row.get('error', '')[:200] or _gib(row.get('peak_bytes'))})")
                    break
                best = row
            if best is not None:
                break
        summary = dict(best or row, largest_fitting_batch=best["per_device_batch"] if best else 0)
        rows.append(summary)
    bar.close()
    return rows, failed


def _gib(x) -> str:
    return f"{x / GiB:.2f} GiB" if x else "?"


# -- reporting --------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[dict], columns) -> str:
    """A Markdown table of ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in columns) + " |")
    return "\n".join(lines)


def _aot_view(r: dict) -> dict:
    return dict(r, peak_gib=r["peak_bytes"] / GiB if r.get("peak_bytes") else None,
                hbm_gib=r["hbm_per_chip"] / GiB, model_tflops_per_chip=r["model_flops_per_chip"] / 1e12,
                per_device_batch=r.get("largest_fitting_batch", r["per_device_batch"]))


def run_sweep(c, workdir) -> int:
    """Run the sweep in ``c`` (an ml-collections config) into ``workdir``; returns failed points."""
    workdir = Path(workdir)
    results = Results(workdir)
    (workdir / "sweep_config.json").write_text(c.to_json_best_effort(indent=2))
    rerun = set()
    if c.get("points"):
        rerun = {p.name for p in points_lib.select(sweep_points(c), c.points)}
    aot_mode = c.get("mode") == "aot" or bool(c.get("topology"))
    if aot_mode:
        rows, failed = run_aot_sweep(c, workdir, results, rerun)
        view = [_aot_view(r) for r in rows]
        text = table(view, AOT_COLUMNS)
        write_csv(view, workdir / "aot_results.csv")
        (workdir / "aot_table.md").write_text(text + "\n")
    else:
        rows, failed = run_train_sweep(c, workdir, results, rerun)
        write_csv(rows, workdir / "results.csv")
        metrics, xs = tuple(c.fit_metrics), tuple(c.fit_x)
        fits = fit_rows(rows, metrics, xs)
        (workdir / "fits.json").write_text(json.dumps(fits, indent=2))
        ok = [r for r in rows if r.get("status") == "ok"]
        if ok:
            scaling_plot(ok, fits, metrics, xs, workdir / "scaling.png")
        text = table(rows, TRAIN_COLUMNS)
        if fits:
            text += "\n\nPower-law fits (y = a * x^b, least squares in log-log):\n" + "\n".join(
                f"- {k}: b = {f['exponent']:.4f} +/- {f['exponent_stderr']:.4f}, a = {f['prefactor']:.4g}, "
                f"R^2 = {f['r2']:.3f} ({f['n']} points)" for k, f in fits.items())
        (workdir / "table.md").write_text(text + "\n")
    print(text)
    print(f"\nresults: {results.path}" + ("" if aot_mode else f", {workdir / 'scaling.png'}"))
    if failed:
        print(f"{failed} point(s) failed; their errors are in {results.path}")
    return failed
