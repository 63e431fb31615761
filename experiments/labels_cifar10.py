"""Label recovery accuracy on real CIFAR-10 test images (no image reconstruction needed).

For each victim (untrained, init seed 0), the client's FedSGD update of each batch is computed and
every strategy of `gipip_jax.labels` reads the labels off it; accuracy is the multiset overlap with
the true labels (`labels.accuracy`), averaged over batches:
- iDLG on the first N1 single test images (indices 0..N1-1);
- bs 4 and 8, three kinds of batches, N batches each:
  unique   : `data.unique_label_batch` from starts 0, 7, 14, ... (distinct labels, as GI-PIP draws);
  pairs    : B/2 classes drawn at random (seed 0), two random images of each (every label repeated);
  natural  : consecutive test images B*k .. B*k+B-1 (labels as they come; repeats when they happen).

Command, from the repository root (measured on the 2-core CPU dev machine, shared with other jobs):
  python experiments/labels_cifar10.py --victims lenet resnet18 --singles 100 --batches 50 \
      --out experiments/results/labels_cifar10.json
  -> 14 min wall, 6.5 min CPU, on the CPU shared with other jobs (ResNet-18 gradients dominate).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from gipip_jax import client, data, labels
from gipip_jax.victims import make_victim
from gipip_jax.workdir import write_text


def batches(test_labels: np.ndarray, kind: str, size: int, count: int) -> list[np.ndarray]:
    """`count` index batches (size,) of one kind (see the module docstring)."""
    if kind == "unique":
        return [data.unique_label_batch(test_labels, 7 * k, size) for k in range(count)]
    if kind == "natural":
        return [np.arange(size * k, size * (k + 1)) for k in range(count)]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        classes = rng.choice(int(test_labels.max()) + 1, size // 2, replace=False)
        out.append(np.concatenate([rng.choice(np.flatnonzero(test_labels == c), 2, replace=False) for c in classes]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--victims", nargs="+", default=["lenet", "resnet18"])
    parser.add_argument("--singles", type=int, default=100)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--out", default="experiments/results/labels_cifar10.json")
    args = parser.parse_args()
    test = data.load("cifar10", "test")
    info = test.info
    rows, start = [], time.perf_counter()
    for name in args.victims:
        victim = make_victim(name, info.num_classes, info.image_shape)
        variables = victim.init(jax.random.key(0))
        grad = jax.jit(lambda x, y: client.victim_gradient(victim, variables, x, y))  # noqa: B023 (used in loop)
        key = jax.random.key(1)

        def measure(strategies, index_batches):
            """{strategy: (mean label accuracy, share of batches fully right)}, one update per batch."""
            accs = {s: [] for s in strategies}
            for indices in index_batches:
                x01, y = test.take(indices)
                g = grad(jnp.asarray(info.normalize(x01)), jnp.asarray(y))
                for s in strategies:
                    accs[s].append(labels.accuracy(labels.recover(s, g, len(y), victim, variables, key), y))
            return {s: (float(np.mean(a)), float(np.mean(np.asarray(a) == 1.0))) for s, a in accs.items()}

        singles = [np.array([i]) for i in range(args.singles)]
        acc, exact = measure(["idlg"], singles)["idlg"]
        rows.append(dict(victim=name, batch_size=1, batches="single", count=len(singles), strategy="idlg",
                         label_accuracy=acc, batches_exact=exact))
        print(rows[-1], flush=True)
        for size in (4, 8):
            for kind in ("unique", "pairs", "natural"):
                index_batches = batches(test.labels, kind, size, args.batches)
                repeats = float(np.mean([len(set(test.labels[b])) < size for b in index_batches]))
                for strategy, (acc, exact) in measure(["yin", "llg", "bias_count"], index_batches).items():
                    rows.append(dict(victim=name, batch_size=size, batches=kind, count=len(index_batches),
                                     with_repeats=repeats, strategy=strategy, label_accuracy=acc, batches_exact=exact))
                    print(rows[-1], flush=True)
    seconds = time.perf_counter() - start
    command = "python experiments/labels_cifar10.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items())
    write_text(args.out, json.dumps({"command": command, "seconds": seconds, "rows": rows}, indent=1))
    print(f"\n| victim | bs | batches | strategy | label accuracy | batches exact |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['victim']} | {r['batch_size']} | {r['batches']} | {r['strategy']} | "
              f"{100 * r['label_accuracy']:.1f} % | {100 * r['batches_exact']:.0f} % |")
    print(f"\n{seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
