"""Table + grid of the learned-prior baselines (issue 8) from finished study work directories.

    python experiments/learned_priors_grid.py --out experiments/results/learned_priors \
        runs/lp_pixels runs/lp_gan5 runs/lp_dip

Copies each W/results.jsonl to OUT/<basename W>.jsonl, prints a markdown table (mean PSNR / SSIM /
LPIPS per attack name and setting label over the targets) and writes OUT/grid.png: ground truth,
then one row per attack (targets in the order of their first indices, order-matched).
"""

import argparse
import collections
import os
import shutil

import numpy as np

from gipip_jax import data, results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("workdirs", nargs="+")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows, truth, table = {}, None, collections.OrderedDict()
    for workdir in args.workdirs:
        records_file = results.records_path(workdir)
        shutil.copy(records_file, os.path.join(args.out, os.path.basename(workdir.rstrip("/")) + ".jsonl"))
        records = results.ok_records(workdir)
        images = results.read_reconstructions(workdir)
        for r in sorted(records, key=lambda r: r["target_indices"][0]):
            name = r["attack"] + (f" ({r['setting_label']})" if r["setting_label"] else "")
            table.setdefault(name, []).append((r["psnr"], r["ssim"], r.get("lpips", np.nan), r["iterations"], r["seconds"]))
            rows.setdefault(name, []).append(images[r["attack_id"]][r["per_image"]["order"]])
        if truth is None and records:
            first = records[0]
            test = data.load(first["dataset"], first["split"])
            truth = np.concatenate([test.take(np.asarray(t))[0] for t in
                                    sorted({tuple(r["target_indices"]) for r in records})])
    print("| attack | iterations | targets | PSNR (dB) | SSIM | LPIPS |")
    print("|---|---|---|---|---|---|")
    for name, values in table.items():
        v = np.asarray(values, np.float64)
        print(f"| {name} | {int(v[0, 3])} | {len(v)} | {v[:, 0].mean():.2f} ± {v[:, 0].std():.2f} | "
              f"{v[:, 1].mean():.3f} ± {v[:, 1].std():.3f} | {np.nanmean(v[:, 2]):.3f} |")
    results.save_grid(os.path.join(args.out, "grid.png"), [truth] + [np.concatenate(r) for r in rows.values()])
    print("grid rows:", ["ground truth", *rows])


if __name__ == "__main__":
    main()
