"""fp32 vs TF32 on the same attacks: one study run twice in one process, once per matmul/conv precision.

    python benchmarks/precision_check.py --workdir W --out W/precision.json \
        --set attack.iterations=2000 --set engine.strategy=vmap --set engine.attacks_per_device=64 ...

Each arm is `gipip-jax study --config experiments/configs/study_cifar10.py --workdir W/ARM --set ...`
(`gipip_jax.cli.main`, the command itself) run inside `jax.default_matmul_precision(ARM)`:
"highest" (full fp32 matmuls and convolutions) and "tensorfloat32" (TF32 tensor cores on NVIDIA
GPUs since Ampere; what XLA uses for float32 by default there). Same config, so the same targets,
settings and PRNG keys: the attacks differ only in rounding. Each arm's work directory is removed
first (a fresh run, not a resume). Pin the engine plan (engine.strategy, engine.attacks_per_device)
so both arms compile the same program shape and no probing is timed.

Written to --out (after each arm): per arm its wall time (process-internal: data, compile, run,
metrics) and attack-steps/s of its waves; per attack both PSNRs and ΔPSNR = TF32 - fp32; their mean
|ΔPSNR|, mean ΔPSNR, largest |ΔPSNR|, and each arm's mean PSNR (overall and per λ_AS). On CPUs XLA
ignores the precision, so ΔPSNR is 0 up to nondeterminism there (what the toy run checks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from gipip_jax.results import read_records

STUDY_CONFIG = "experiments/configs/study_cifar10.py"
ARMS = ("tensorfloat32", "highest")


def study_numbers(workdir: str) -> dict:
    """Attack-steps/s of a finished study's waves and its records' PSNR, from W/results.jsonl and W/plan.json."""
    records = read_records(os.path.join(workdir, "results.jsonl"))
    waves = {r["wave"]: r for r in records}
    wave_s = sum(r["wave_seconds"] for r in waves.values())
    steps = sum(r["steps"] for r in records)
    plan = None
    if os.path.exists(os.path.join(workdir, "plan.json")):
        with open(os.path.join(workdir, "plan.json")) as f:
            plan = json.load(f)
    return {"records": len(records), "ok": sum(r.get("status") == "ok" for r in records),
            "attack_steps": steps, "wave_seconds": wave_s,
            "attack_steps_per_s": steps / wave_s if wave_s > 0 else None,
            "plan": None if plan is None else {k: plan.get(k) for k in ("strategy", "attacks_per_device", "num_devices",
                                                                         "probe", "backend")},
            "psnr": {str(r["attack_id"]): r.get("psnr") for r in records},
            "as_weight": {str(r["attack_id"]): r["setting"]["as_weight"] for r in records}}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def compare(arms: dict) -> dict:
    """ΔPSNR = TF32 - fp32 per attack present (status ok) in both arms."""
    tf32, fp32 = arms.get("tensorfloat32"), arms.get("highest")
    if not (tf32 and fp32 and tf32.get("numbers") and fp32.get("numbers")):
        return {"pairs": [], "compared": 0}
    a, b = tf32["numbers"], fp32["numbers"]
    pairs = []
    for attack_id in sorted(set(a["psnr"]) & set(b["psnr"]), key=int):
        p_tf32, p_fp32 = a["psnr"][attack_id], b["psnr"][attack_id]
        if p_tf32 is None or p_fp32 is None:
            continue
        pairs.append({"attack_id": int(attack_id), "as_weight": a["as_weight"][attack_id],
                      "psnr_fp32": p_fp32, "psnr_tf32": p_tf32, "delta": p_tf32 - p_fp32})
    deltas = [p["delta"] for p in pairs]
    by_weight = {}
    for p in pairs:
        by_weight.setdefault(str(p["as_weight"]), []).append(p)
    return {"compared": len(pairs),
            "mean_abs_delta_psnr": _mean([abs(d) for d in deltas]), "mean_delta_psnr": _mean(deltas),
            "max_abs_delta_psnr": max((abs(d) for d in deltas), default=None),
            "mean_psnr_fp32": _mean([p["psnr_fp32"] for p in pairs]),
            "mean_psnr_tf32": _mean([p["psnr_tf32"] for p in pairs]),
            "by_as_weight": {w: {"attacks": len(ps), "mean_psnr_fp32": _mean([p["psnr_fp32"] for p in ps]),
                                 "mean_psnr_tf32": _mean([p["psnr_tf32"] for p in ps]),
                                 "mean_abs_delta_psnr": _mean([abs(p["delta"]) for p in ps])}
                             for w, ps in sorted(by_weight.items(), key=lambda item: float(item[0]))},
            "tf32_speedup": (a["attack_steps_per_s"] / b["attack_steps_per_s"]
                             if a.get("attack_steps_per_s") and b.get("attack_steps_per_s") else None),
            "pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="the arms run in WORKDIR/<precision> (removed first)")
    parser.add_argument("--out", required=True, help="JSON written after each arm")
    parser.add_argument("--config", default=STUDY_CONFIG)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="study config override")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--reuse", action="append", default=[], metavar="ARM=WORKDIR",
                        help="take arm ARM from a finished study in WORKDIR run under that precision with the same "
                             "config (e.g. the GPU check's part 2 when the iterations agree) instead of running it")
    args = parser.parse_args(argv)
    reused = dict(item.split("=", 1) for item in args.reuse)
    unknown = set(reused) - set(ARMS)
    if unknown:
        parser.error(f"--reuse: unknown arm(s) {sorted(unknown)}; choose from {ARMS}")
    import jax

    from gipip_jax import cli
    from gipip_jax.workdir import write_text

    found = {"config": args.config, "set": args.set, "backend": jax.default_backend(),
             "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__, "arms": {}}

    def save() -> None:
        found.update(compare(found["arms"]))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_text(args.out, json.dumps(found, indent=1))

    status = 0
    for arm, workdir in reused.items():
        numbers = study_numbers(workdir)
        found["arms"][arm] = {"rc": 0, "wall_s": None, "workdir": workdir, "reused": True, "numbers": numbers}
        print(f"== precision arm {arm}: reused {workdir} ({numbers['ok']} attacks ok)", flush=True)
    for arm in [a for a in args.arms if a not in reused]:
        workdir = os.path.join(args.workdir, arm)
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"== precision arm {arm}: {workdir}", flush=True)
        started = time.perf_counter()
        with jax.default_matmul_precision(arm):
            rc = cli.main(["study", "--config", args.config, "--workdir", workdir,
                           *[item for value in args.set for item in ("--set", value)]])
        wall = time.perf_counter() - started
        found["arms"][arm] = {"rc": rc, "wall_s": wall, "workdir": workdir,
                              "numbers": study_numbers(workdir) if rc == 0 else None}
        print(f"== precision arm {arm}: exit {rc}, {wall:.1f} s", flush=True)
        status = status or rc
        save()
    summary = {k: found.get(k) for k in ("compared", "mean_abs_delta_psnr", "mean_delta_psnr", "max_abs_delta_psnr",
                                         "mean_psnr_fp32", "mean_psnr_tf32", "tf32_speedup")}
    print(json.dumps(summary), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
