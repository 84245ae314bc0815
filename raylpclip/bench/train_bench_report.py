"""`raylpclip bench train`'s report: every round's figures, the headline ratios from the best round of
each measurement, as summary.json's figures and as the printed table."""

from __future__ import annotations

from typing import Any

import numpy as np

from raylpclip.bench.train_timing import pooled

# The targets on 2 CPUs; printed beside the figures, never asserted.
TARGETS = {"ratio_vs_compute_limit": 0.9, "data_wait_fraction": 0.05, "psd_overhead": 0.03, "two_worker_ratio": 0.85}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def checkpoint_figures(report_s: dict[str, float], *, saves: list[int]) -> dict[str, float | None]:
    """Seconds the loop spent inside the hooks' report on checkpoint steps and on plain report steps."""
    saved = [v for k, v in report_s.items() if int(k) in saves]
    plain = [v for k, v in report_s.items() if int(k) not in saves]
    return {"checkpoint_report_s": _mean(saved), "plain_report_s": _mean(plain)}


def summarize(rounds: list[dict[str, Any]], *, batch: int, threads: int, saves: list[int], use_gpu: bool) -> dict[str, Any]:
    """Every round's figures and the headline ratios from the best round of each measurement.

    rounds[i]: {"limit": in_memory_windows(...), "one": [rank figures], "two": [rank figures] or None,
    "load": load average when the round began}."""
    limit = [pooled(r["limit"]["psd"]) for r in rounds]
    limit_rates = [batch / w["step_time_s"] for w in limit]
    one = [r["one"] for r in rounds]
    one_rates = [ranks[0]["timed"]["samples_per_s"] for ranks in one]
    best = int(np.argmax(one_rates))
    psd = pooled([w for r in rounds for w in r["limit"]["psd"]])
    clip = pooled([w for r in rounds for w in r["limit"]["clip"]])
    loss = [r["limit"]["loss"] for r in rounds]
    loss_extra = float(np.median([x["extra_s"] for x in loss]))
    s: dict[str, Any] = {
        "samples_per_s": max(one_rates),
        "compute_limit_samples_per_s": max(limit_rates),
        "ratio_vs_compute_limit": max(one_rates) / max(limit_rates),
        "data_wait_fraction": _mean([rank["timed"]["data_wait_fraction"] for rank in one[best]]),
        "psd_overhead": (psd["step_time_s"] - clip["step_time_s"]) / psd["step_time_s"],
        "psd_loss_overhead": loss_extra / psd["step_time_s"],
        "step_time_s": batch / max(one_rates),
        "compute_limit_step_time_s": batch / max(limit_rates),
        "psd_step_time_s": psd["step_time_s"],
        "clip_step_time_s": clip["step_time_s"],
        "psd_loss_s": float(np.median([x["psd_loss_s"] for x in loss])),
        "clip_loss_s": float(np.median([x["clip_loss_s"] for x in loss])),
        "siglip_loss_s": float(np.median([x.get("siglip_loss_s", float("nan")) for x in loss])),
        "peak_memory_mb": max(rank["peak_memory_mb"]["rss_mb"] for ranks in one for rank in ranks),
        "peak_memory_mb_per_worker": {
            "compute_limit": max(r["limit"]["peak_memory_mb"]["rss_mb"] for r in rounds),
            "one_worker": [max(ranks[i]["peak_memory_mb"]["rss_mb"] for ranks in one) for i in range(len(one[0]))],
        },
        "ratio_vs_compute_limit_per_round": [o / lim for o, lim in zip(one_rates, limit_rates)],
        "rounds": {"compute_limit_samples_per_s": limit_rates, "samples_per_s": one_rates,
                   "data_wait_fraction": [_mean([rk["timed"]["data_wait_fraction"] for rk in ranks]) for ranks in one],
                   "load_avg": [r["load"] for r in rounds]},
        **checkpoint_figures(one[best][0]["report_s"], saves=saves),
        "threads": threads, "batch_size": batch, "targets": TARGETS,
    }
    if use_gpu and "cuda_allocated_mb" in one[best][0]["peak_memory_mb"]:
        s["peak_cuda_memory_mb"] = max(rank["peak_memory_mb"]["cuda_allocated_mb"] for ranks in one for rank in ranks)
    if all("patch_dropout" in r["limit"] for r in rounds):
        s.update(patch_dropout_figures(rounds, psd_step_s=psd["step_time_s"]))
    two = [r["two"] for r in rounds if r.get("two")]
    if two:
        two_rates = [ranks[0]["timed"]["samples_per_s"] for ranks in two]
        # Per unit of hardware: the same threads split over two workers on CPU; one GPU each on GPU.
        units_one, units_two = (1, 2) if use_gpu else (threads, threads)
        s.update(two_worker_samples_per_s=max(two_rates),
                 two_worker_ratio=(max(two_rates) / units_two) / (max(one_rates) / units_one),
                 two_worker_step_time_s=batch / max(two_rates),
                 two_worker_data_wait_fraction=_mean([rk["timed"]["data_wait_fraction"]
                                                      for rk in two[int(np.argmax(two_rates))]]))
        s["rounds"]["two_worker_samples_per_s"] = two_rates
        s["peak_memory_mb_per_worker"]["two_workers"] = [max(ranks[i]["peak_memory_mb"]["rss_mb"] for ranks in two)
                                                         for i in range(len(two[0]))]
    if any(r.get("two_fsdp") for r in rounds):
        s.update(fsdp_figures(rounds))
    return s


def fsdp_figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """`bench.fsdp`: the 2-worker fsdp runs against the 2-worker ddp runs of the same rounds: the best rate of
    each, and per worker the peak resident memory (the most over rounds) and the parameter + optimizer bytes
    it holds. Ratios are fsdp / ddp: memory below 1 is fsdp's saving, speed below 1 its cost."""
    def per_worker(key: str, runs: list) -> list[float]:
        return [max(ranks[i][key] if key != "peak_memory_mb" else ranks[i][key]["rss_mb"] for ranks in runs)
                for i in range(len(runs[0]))]

    out: dict[str, Any] = {}
    for name, runs in (("ddp", [r["two"] for r in rounds]), ("fsdp", [r["two_fsdp"] for r in rounds])):
        out[f"{name}_two_worker_samples_per_s"] = max(ranks[0]["timed"]["samples_per_s"] for ranks in runs)
        out[f"{name}_peak_memory_mb_per_worker"] = per_worker("peak_memory_mb", runs)
        if all("state_bytes" in rank for ranks in runs for rank in ranks):
            out[f"{name}_state_mb_per_worker"] = [b / 2**20 for b in per_worker("state_bytes", runs)]
    out["fsdp_vs_ddp_ratio"] = out["fsdp_two_worker_samples_per_s"] / out["ddp_two_worker_samples_per_s"]
    out["fsdp_peak_memory_ratio"] = (max(out["fsdp_peak_memory_mb_per_worker"])
                                     / max(out["ddp_peak_memory_mb_per_worker"]))
    if "fsdp_state_mb_per_worker" in out and "ddp_state_mb_per_worker" in out:
        out["fsdp_state_ratio"] = max(out["fsdp_state_mb_per_worker"]) / max(out["ddp_state_mb_per_worker"])
    return out


def patch_dropout_figures(rounds: list[dict[str, Any]], *, psd_step_s: float) -> dict[str, float]:
    """`bench.patch_dropout`'s figures: its PSD windows pooled over every round against the PSD windows at
    the config's own patch dropout (usually 0), and the vision tower alone (bench/vision_timing.py), the
    median over rounds of each round's medians. Ratios are speed-ups: above 1, patch dropout is faster."""
    step = pooled([w for r in rounds for w in r["limit"]["patch_dropout"]])["step_time_s"]
    vision = [r["limit"]["vision"] for r in rounds]
    base_v, drop_v = (float(np.median([v[k] for v in vision])) for k in ("base", "patch_dropout"))
    return {"patch_dropout": vision[0]["p"], "patch_dropout_base": vision[0]["base_p"],
            "patch_dropout_step_time_s": step, "patch_dropout_step_ratio": psd_step_s / step,
            "vision_step_time_s": base_v, "patch_dropout_vision_step_time_s": drop_v,
            "patch_dropout_vision_ratio": base_v / drop_v, "vision_share": base_v / psd_step_s}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_table(s: dict[str, Any]) -> str:
    lim, t = s["compute_limit_samples_per_s"], s["threads"]
    rows = [
        (f"compute limit: plain loop, PSD step, 1 x {t} threads", lim, s["compute_limit_step_time_s"], None),
        ("compute limit: plain loop, CLIP step (a_max 0)", s["batch_size"] / s["clip_step_time_s"], s["clip_step_time_s"], None),
        (f"pipeline: shards -> Ray Data -> 1 worker x {t} threads", s["samples_per_s"], s["step_time_s"], s["data_wait_fraction"]),
    ]
    if "patch_dropout" in s:
        rows.insert(1, (f"compute limit: plain loop, PSD step, patch dropout {s['patch_dropout']:g}",
                        s["batch_size"] / s["patch_dropout_step_time_s"], s["patch_dropout_step_time_s"], None))
    if "two_worker_samples_per_s" in s:
        rows.append((f"pipeline: 2 workers x {max(1, t // 2)} thread(s)", s["two_worker_samples_per_s"],
                     s["two_worker_step_time_s"], s["two_worker_data_wait_fraction"]))
    loads = s["rounds"]["load_avg"]
    lines = [f"[raylpclip] bench train: batch {s['batch_size']}, {len(loads)} round(s), load average at each round's start "
             + ", ".join(f"{x:.1f}" for x in loads),
             f"  {'measurement':<54} {'samples/s':>9} {'step s':>7} {'vs limit':>8} {'data wait':>9}"]
    for label, rate, step, wait in rows:
        lines.append(f"  {label:<54} {rate:>9.1f} {step:>7.3f} {rate / lim:>8.2f} {_pct(wait):>9}")
    target = TARGETS
    lines.append(f"[raylpclip] ratio_vs_compute_limit {s['ratio_vs_compute_limit']:.2f} (target >= {target['ratio_vs_compute_limit']}), "
                 f"data wait {_pct(s['data_wait_fraction'])} (< {_pct(target['data_wait_fraction'])}), "
                 f"PSD overhead {_pct(s['psd_overhead'])} of the step (< {_pct(target['psd_overhead'])}; loss alone "
                 f"{_pct(s['psd_loss_overhead'])}; per loss forward+backward on one micro-batch: CLIP "
                 f"{1e3 * s['clip_loss_s']:.2f} ms, SigLIP {1e3 * s['siglip_loss_s']:.2f} ms)"
                 + (f", two_worker_ratio {s['two_worker_ratio']:.2f} (>= {target['two_worker_ratio']})" if "two_worker_ratio" in s else ""))
    if "patch_dropout" in s:
        lines.append(f"[raylpclip] patch dropout {s['patch_dropout']:g} vs {s['patch_dropout_base']:g}: the step "
                     f"{s['patch_dropout_step_ratio']:.2f}x as fast, the vision tower's forward+backward alone "
                     f"{s['patch_dropout_vision_ratio']:.2f}x ({s['vision_step_time_s']:.3f} -> "
                     f"{s['patch_dropout_vision_step_time_s']:.3f} s; {_pct(s['vision_share'])} of the step without)")
    if "fsdp_vs_ddp_ratio" in s:
        state = (f"; parameters + optimizer state {max(s['fsdp_state_mb_per_worker']):.0f} vs "
                 f"{max(s['ddp_state_mb_per_worker']):.0f} MB per worker ({s['fsdp_state_ratio']:.2f}x)"
                 if "fsdp_state_ratio" in s else "")
        lines.append(f"[raylpclip] 2 workers, fsdp vs ddp: {s['fsdp_two_worker_samples_per_s']:.1f} vs "
                     f"{s['ddp_two_worker_samples_per_s']:.1f} samples/s ({s['fsdp_vs_ddp_ratio']:.2f}x); "
                     f"peak memory per worker {max(s['fsdp_peak_memory_mb_per_worker']):.0f} vs "
                     f"{max(s['ddp_peak_memory_mb_per_worker']):.0f} MB ({s['fsdp_peak_memory_ratio']:.2f}x){state}")
    ckpt = s.get("checkpoint_report_s")
    lines.append(f"[raylpclip] peak memory per worker {s['peak_memory_mb']:.0f} MB (plain loop "
                 f"{s['peak_memory_mb_per_worker']['compute_limit']:.0f} MB)"
                 + (f"; a checkpoint report blocks {ckpt:.3f} s vs {s['plain_report_s'] or 0:.3f} s for a plain one"
                    if ckpt is not None else ""))
    return "\n".join(lines)
