"""Benchmark entry point: proves the speed of our training step against the released code's structure.

    python -m bench.run --quick                       # a few minutes on a 2-core CPU (RN50, K = 12)
    python -m bench.run                               # full: RN50 + RN101, K = 12 and 65, scaling grid
    python -m bench.run --device cuda --models RN50,RN101 --classes 65,12

Order of work: (1) equivalence — both structures must give the same logits, loss and gradients on the same
inputs, or the run stops with exit status 1 before any timing; (2) feature-extraction throughput from JPEGs;
(3) interleaved step timings; (4) epoch estimates from the measured parts; (5) a profile of our step;
(6) scaling in classes × domains with peak memory. Results are printed and written into a block of
``--out`` (one block per device and mode, so quick, full and GPU results live side by side).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _k, _v in {"HF_HUB_OFFLINE": "1", "DAPL_OFFLINE": "1", "DO_NOT_TRACK": "true"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

from bench import features as feat  # noqa: E402
from bench.common import classnames, fmt_s, gflop, loadavg, machine_info, md_table, write_block  # noqa: E402
from bench.official import check_equivalence  # noqa: E402
from bench.profile import profile_step  # noqa: E402
from bench.report import (  # noqa: E402
    VIEWS,
    Report,
    Results,
    add_extraction_sections,
    add_protocol_section,
    add_step_sections,
    equivalence_table,
)
from bench.scaling import MEMORY_LIMIT_GIB, official_tokens, run_point  # noqa: E402
from bench.step import (  # noqa: E402
    OFFICE_HOME,
    SETTINGS,
    VISDA,
    EpochEstimate,
    OursStep,
    Protocol,
    StepResult,
    compare_steps,
    epoch_estimate,
    make_batch,
    measure_our_eval,
    model_for,
)
from dapl.clip import ClipBundle, load_clip  # noqa: E402
from dapl.config import ModelConfig  # noqa: E402
from dapl.encoder import resolve_precision  # noqa: E402

TARGETS = {"unified": 25.0, "csc": 8.0, "epoch": 40.0}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="RN50, K = 12, few repetitions: a few minutes on 2 cores")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", default=None, help="comma list of RN50, RN101, ViT-B-16 (default: RN50 in quick "
                   "mode, RN50,RN101 otherwise)")
    p.add_argument("--classes", default=None, help="comma list of K for the step comparison (default 12 quick, "
                   "12,65 full)")
    p.add_argument("--reps-official", type=int, default=None, help="timed official steps per variant (2)")
    p.add_argument("--reps-ours", type=int, default=None, help="timed steps of ours per path (5 quick, 7)")
    p.add_argument("--official-variants", default=None, help="unified,csc (full) or unified (quick): which "
                   "context the timed official step carries; its cost does not depend on it")
    p.add_argument("--images", type=int, default=None, help="JPEGs for the throughput test (128 quick, 256)")
    p.add_argument("--scaling", default=None, help="'none', 'quick' or 'full' (default follows the mode)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU default 1: on a shared, "
                   "oversubscribed machine 2 threads measured 2–10× noisier); 0 = torch's default")
    p.add_argument("--out", default="docs/PERFORMANCE.md", help="markdown file to write the results block into "
                   "('' = print only)")
    p.add_argument("--tag", default=None, help="name of the results block (default <device>-<quick|full>)")
    return p.parse_args(argv)


@dataclass(frozen=True)
class Options:
    """The command line with the quick or full mode's defaults filled in."""

    device: str
    threads: int  # 0 = torch's default
    models: list[str]
    classes: list[int]
    reps_official: int
    reps_ours: int
    variants: tuple[str, ...]
    n_images: int
    scaling: str
    tag: str
    out: str
    command: str


def options(a: argparse.Namespace, argv: list[str] | None) -> Options:
    q = a.quick
    return Options(
        device=a.device,
        threads=a.threads if a.threads is not None else (1 if a.device == "cpu" else 0),
        models=(a.models or ("RN50" if q else "RN50,RN101")).split(","),
        classes=[int(k) for k in (a.classes or ("12" if q else "12,65")).split(",")],
        reps_official=a.reps_official or 2,
        reps_ours=a.reps_ours or (5 if q else 7),
        variants=tuple((a.official_variants or ("unified" if q else "unified,csc")).split(",")),
        n_images=a.images or (128 if q else 256),
        scaling=a.scaling or ("quick" if q else "full"),
        tag=a.tag or f"{a.device}-{'quick' if q else 'full'}",
        out=a.out,
        command="python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
    )


def model_name(short: str) -> str:
    """OpenAI-architecture names (QuickGELU, as the released weights need)."""
    return short if short.endswith("-quickgelu") or short.startswith("ViT") else f"{short}-quickgelu"


def protocol_for(K: int) -> Protocol:
    return VISDA if K == VISDA.K else OFFICE_HOME if K == OFFICE_HOME.K else Protocol(
        f"K={K} (Office-Home sizes)", K, OFFICE_HOME.n_source, OFFICE_HOME.n_target, 200, 1)


def main(argv: list[str] | None = None) -> int:
    """The order of work of the module docstring; exit status 1 on an equivalence mismatch, 2 without CUDA."""
    o = options(parse(argv), argv)
    dev = torch.device(o.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    if o.threads:
        torch.set_num_threads(o.threads)
    t_start = time.time()
    rep, res = Report(), Results()
    add_machine_section(rep, o, dev)
    first_bundle = None
    for short in o.models:
        bundle = load_clip(ModelConfig(name=model_name(short), pretrained=None, device=o.device, amp=False))
        first_bundle = first_bundle or bundle
        if not equivalent(rep, res, bundle, short, min(o.classes)):
            return 1
        measure_extraction(res, bundle, short, o.n_images)
        for K in o.classes:
            measure_steps(res, bundle, short, K, o)
        del bundle
    add_step_sections(rep, res)
    add_protocol_section(rep, res)
    add_extraction_sections(rep, res, cuda=dev.type == "cuda")
    add_profile_sections(rep, first_bundle, o.models[0], max(o.classes))
    if o.scaling != "none":
        add_scaling_section(rep, first_bundle, o.models[0], o.scaling)
    finish(rep, o, t_start)
    return 0


def add_machine_section(rep: Report, o: Options, dev: torch.device) -> None:
    info = machine_info(dev)
    info["load average at start"] = "{:.2f} {:.2f} {:.2f}".format(*loadavg())
    rep.add("Machine", md_table(["", ""], [[k, v] for k, v in info.items()]),
            f"Command: `{o.command}`. Random weights at real size (`pretrained=None`): speed does not depend on "
            "the weights. Training steps and evaluation in fp32 (both structures); our one-off feature extraction "
            f"at `features.precision=auto` ({resolve_precision('auto', dev)} here).")


def equivalent(rep: Report, res: Results, bundle: ClipBundle, short: str, K: int) -> bool:
    """(1) Same pixels, same context -> same logits, loss and gradients; on a mismatch no timing is meaningful."""
    names = classnames(K)
    batch = make_batch(bundle, K, 8, 8, seed=3)
    for setting in SETTINGS.values():
        eq = check_equivalence(bundle, model_for(bundle, names, ["source", "target"], setting), batch)
        res.equivalence.append([short, K, *eq.row()])
        print(f"[equivalence] {short} K={K} {setting}: max |Δlogit| {eq.logits_max_abs:.2e}, "
              f"max |Δgrad| {eq.grad_max_abs:.2e} -> {'OK' if eq.ok else 'MISMATCH'}", flush=True)
        if not eq.ok:
            rep.add("Equivalence FAILED", equivalence_table(res))
            print("the two structures disagree: no timing is meaningful; exiting 1", file=sys.stderr)
            return False
    return True


def measure_extraction(res: Results, bundle: ClipBundle, short: str, n_images: int) -> None:
    """(2) Feature-extraction throughput (the official evaluation's per-image cost too) and the matmul ceiling."""
    tp = feat.measure(bundle, short, n_images)
    res.throughput[short] = tp
    g = res.img_gflop[short] = feat.encoder_gflop(bundle)
    for prec in sorted({tp.precision, "fp32"} - set(res.ceiling)):
        res.ceiling[prec] = feat.matmul_gflops(prec, bundle.device)
        print(f"[ceiling] {prec} matrix products: {res.ceiling[prec]:.0f} GFLOP/s", flush=True)
    print(f"[features] {short}: {tp.test_view_img_s:.1f} img/s test view, {tp.train_view_img_s:.1f} img/s "
          f"train view, encoder alone {tp.encoder_img_s:.1f} img/s = {tp.encoder_img_s * g:.0f} GFLOP/s "
          f"({g:.2f} GFLOP/img; {tp.precision} matmul ceiling {res.ceiling[tp.precision]:.0f} GFLOP/s)", flush=True)


def measure_steps(res: Results, bundle: ClipBundle, short: str, K: int, o: Options) -> None:
    """(3) + (4) Interleaved step timings at K classes, and the epochs and protocols estimated from them."""
    r = compare_steps(bundle, short, classnames(K), o.reps_official, o.reps_ours, o.variants)
    tp = res.throughput[short]
    for v in SETTINGS:
        off = f"official {v}" if f"official {v}" in r.samples else f"official {o.variants[0]}"
        res.steps.append(step_row(r, short, K, v, off))
        proto = protocol_for(K)
        ev = measure_our_eval(r.ours[v], proto.n_target)
        est = epoch_estimate(proto, r.samples[off].median, r.samples[f"ours {v}"].median, ev,
                             r.official_eval_text_s, tp.test_view_img_s)
        res.epochs.append(epoch_row(est, short, K, v))
        res.protocols.append(protocol_row(res, est, gflop(r.ours[v]), short, K, v))
    res.memory += memory_rows(r, short, K)


def step_row(r: StepResult, short: str, K: int, v: str, off: str) -> list[object]:
    ratio = r.ratio(f"ours {v}", off)
    s_off, s_ours = r.samples[off], r.samples[f"ours {v}"]
    print(f"[step] {short} K={K} {v}: official {s_off.median:.2f} s, ours {s_ours.median:.3f} s "
          f"-> {ratio:.1f}× (target ≥ {TARGETS[v]:.0f}×)", flush=True)
    return [short, K, v, fmt_s(s_off.median), s_off.spread, len(s_off.times), fmt_s(s_ours.median),
            s_ours.spread, len(s_ours.times), f"{ratio:.1f}×", f"≥ {TARGETS[v]:.0f}×",
            "pass" if ratio >= TARGETS[v] else "FAIL", "{:.1f}/{:.1f}/{:.1f}".format(*r.load)]


def epoch_row(est: EpochEstimate, short: str, K: int, v: str) -> list[object]:
    target = TARGETS["epoch"] if v == "unified" else None  # stated for the default context
    proto = est.protocol
    print(f"[epoch] {short} K={K} {v} ({proto.name}): official {fmt_s(est.official_s)}, ours "
          f"{fmt_s(est.ours_s)} -> {est.ratio:.1f}×", flush=True)
    return [short, K, v, proto.name, est.iters, fmt_s(est.official_eval_s), fmt_s(est.ours_eval_s),
            fmt_s(est.official_s), fmt_s(est.ours_s), f"{est.ratio:.1f}×",
            f"≥ {target:.0f}×" if target else "none stated",
            ("pass" if est.ratio >= target else "FAIL") if target else ""]


def protocol_row(res: Results, est: EpochEstimate, step_gflop: float, short: str, K: int, v: str) -> list[object]:
    """Every epoch + ours' one-off extraction (V train views + test view per image), and the ceiling bounds."""
    proto, tp, ceiling = est.protocol, res.throughput[short], res.ceiling
    n_imgs = proto.n_source + proto.n_target
    if proto.tasks > 1:  # Office-Home: each domain's images are cached once for all 12 tasks
        n_imgs = 15_588
    extract = n_imgs * (VIEWS / tp.train_view_img_s + 1 / tp.test_view_img_s)
    # the same views with the encoder at the matmul ceiling and free decoding: no encoder can beat it
    floor = n_imgs * (VIEWS + 1) * res.img_gflop[short] / ceiling[tp.precision]
    runs = proto.tasks * proto.epochs
    official, train = runs * est.official_s, runs * est.ours_s
    # our fp32 training steps at the fp32 matmul ceiling (their counted GFLOP; evaluation left out)
    train_floor = runs * est.iters * step_gflop / ceiling["fp32"]
    return [short, K, v, proto.name, fmt_s(official), fmt_s(extract), fmt_s(train), fmt_s(train + extract),
            f"{official / (train + extract):.1f}×", fmt_s(floor), f"{official / (train + floor):.1f}×",
            fmt_s(train_floor), f"{official / (train_floor + floor):.1f}×"]


def memory_rows(r: StepResult, short: str, K: int) -> list[list[object]]:
    rows = []
    for k, s in r.samples.items():
        m = s.memory
        rows.append([short, K, k, f"{m.get('peak_rss_gib', float('nan')):.2f}",
                     f"{m.get('peak_rss_gib', 0) - m.get('rss_before_gib', 0):.2f}"]
                    + ([f"{m['peak_cuda_gib']:.2f}"] if "peak_cuda_gib" in m else []))
    return rows


def add_profile_sections(rep: Report, bundle: ClipBundle, short: str, K: int) -> None:
    """(5) Where our step's time goes, per context kind."""
    for v, setting in SETTINGS.items():
        step = OursStep(bundle, model_for(bundle, classnames(K), ["source", "target"], setting))
        phase_md, op_md, per_step = profile_step(step)
        rep.add(f"Profile of our step: {short}, K = {K}, {v} context ({per_step:.3f} s/step under the profiler)",
                phase_md + "\n\n" + op_md)


def scaling_grid(mode: str) -> list[tuple[str, int, int, int]]:
    """(context, K, D, timed repetitions) per point: a few in quick mode, the whole grid in full mode."""
    if mode == "quick":
        return ([("unified", K, 2, 1) for K in (12, 65, 126, 345)]
                + [("unified", 65, D, 1) for D in (4, 6)] + [("unified", 345, 6, 1)] + [("csc", 65, 2, 1)])
    return ([("unified", K, D, 2) for K in (12, 65, 126, 345) for D in (2, 4, 6)]
            + [("csc", K, D, 1) for K in (12, 65, 126) for D in (2, 4, 6)] + [("csc", 345, 6, 1)])


def add_scaling_section(rep: Report, bundle: ClipBundle, short: str, mode: str) -> None:
    """(6) Scaling in classes × domains (RN50; RN101's text tower is the same size)."""
    rows = []
    for setting, K, D, reps in scaling_grid(mode):
        pt = run_point(bundle, classnames(K), D, setting, reps)
        m = pt.samples.memory
        rows.append([setting, K, D, K * D, pt.tokens, official_tokens(K, D), pt.chunk or "-",
                     fmt_s(pt.samples.median), f"{m['peak_rss_gib']:.2f}",
                     f"{m['peak_rss_gib'] - m['rss_before_gib']:.2f}", "yes" if pt.ok else "NO"])
        print(f"[scaling] {setting} K={K} D={D}: {fmt_s(pt.samples.median)}, peak RSS "
              f"{m['peak_rss_gib']:.2f} GiB", flush=True)
    rep.add(f"Scaling with classes × domains ({short}, our training step)", md_table(
        ["context", "K", "D", "prompts", "positions encoded", "official positions", "chunk", "step",
         "peak RSS (GiB)", "peak − before (GiB)", f"< {MEMORY_LIMIT_GIB:.0f} GiB"], rows),
        "positions encoded = what our text transformer processes per step (each shared prefix once + packed "
        "suffixes); official positions = (D·K + K) × 77 × 2 forwards. `chunk` = prompts per activation-"
        "checkpointed chunk. Sources are all domains but the last, the target the last (multi-source).")


def finish(rep: Report, o: Options, t_start: float) -> None:
    rep.add("Run", f"Finished in {fmt_s(time.time() - t_start)}; load average at the end "
            "{:.2f} {:.2f} {:.2f}.".format(*loadavg()))
    if o.out:
        title = f"## Results: {o.tag} (generated by `bench/run.py`, {time.strftime('%Y-%m-%d %H:%M')})\n\n"
        write_block(Path(o.out), o.tag, title + rep.markdown())
        print(f"\nwritten to {o.out} (block '{o.tag}')")


if __name__ == "__main__":
    sys.exit(main())
