"""Near-duplicate deduplication: tuneforge (numpy MinHash + LSH) vs datasketch.MinHashLSH, in one run.

100k generated rows with planted near duplicates; both sides get the same threshold, permutations and word
shingles, and both start from raw text (normalizing, shingling, hashing, indexing and clustering all count).
Each side runs in a fresh process so its peak memory (max RSS above the process's RSS before it started) is
its own (Linux: /proc/self/status VmHWM, reset before each side starts). Prints rows/s of each, their
ratio, recall and precision on the planted pairs, and peak memory.

    python bench/dedup.py [--rows 100000] [--threshold 0.8] [--num-perm 128]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import string
import time
from typing import Any

SHINGLE = 3


def make_rows(n: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """`n` texts of random words; 15% are edited copies (1-2 word edits) of another row: the planted pairs."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(30000)]
    n_copies = int(n * 0.15)
    base = [[rng.choice(vocab) for _ in range(rng.randint(25, 60))] for _ in range(n - n_copies)]
    docs = [" ".join(w) for w in base]
    planted: list[tuple[int, int]] = []
    for src in rng.sample(range(len(base)), n_copies):
        words = list(base[src])
        for _ in range(rng.randint(1, 2)):
            op, at = rng.random(), rng.randrange(len(words))
            if op < 0.4:
                words[at] = rng.choice(vocab)
            elif op < 0.7:
                words.insert(at, rng.choice(vocab))
            else:
                del words[at]
        # Case and punctuation changes must not matter: matching is on normalized text.
        text = " ".join(words)
        text = text.capitalize() + "!" if rng.random() < 0.5 else text
        planted.append((src, len(docs)))
        docs.append(text)
    order = list(range(len(docs)))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    return [docs[i] for i in order], [tuple(sorted((where[a], where[b]))) for a, b in planted]  # type: ignore[misc]


def shingles(normalized: str) -> set[str]:
    words = normalized.split()
    if len(words) < SHINGLE:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def jaccard(a: str, b: str) -> float:
    from tuneforge.data.dedup import normalize_for_matching

    sa, sb = shingles(normalize_for_matching(a)), shingles(normalize_for_matching(b))
    return len(sa & sb) / len(sa | sb)


def run_tuneforge(texts: list[str], threshold: float, num_perm: int) -> list[int]:
    from tuneforge.data.dedup import normalize_for_matching
    from tuneforge.data.near_dup import NearDuplicateIndex

    index = NearDuplicateIndex(threshold, num_perm=num_perm, shingle_words=SHINGLE)
    batch = 4096
    for lo in range(0, len(texts), batch):
        index.add([normalize_for_matching(t) for t in texts[lo : lo + batch]])
    return [int(c) for c in index.match().cluster]


def run_datasketch(texts: list[str], threshold: float, num_perm: int) -> list[int]:
    """The documented datasketch recipe: a MinHash per text, insert into MinHashLSH, query, union."""
    from datasketch import MinHash, MinHashLSH

    from tuneforge.data.dedup import normalize_for_matching

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for i, t in enumerate(texts):
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode() for s in shingles(normalize_for_matching(t))])
        lsh.insert(i, m)
        hashes.append(m)
    parent = list(range(len(texts)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(len(texts))]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM), so the peak measured is the method's and not the setup's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _worker(name: str, rows: int, threshold: float, num_perm: int, queue: Any) -> None:
    texts, _ = make_rows(rows)
    import datasketch  # noqa: F401  (imported before measuring, like numpy/scipy below)
    import numpy  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401

    _reset_peak()
    before = _status_kib("VmRSS")
    fn = run_tuneforge if name == "tuneforge" else run_datasketch
    start = time.perf_counter()
    cluster = fn(texts, threshold, num_perm)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    queue.put({"seconds": seconds, "peak_mib": max(0, peak - before) / 1024, "cluster": cluster})


def measure(name: str, rows: int, threshold: float, num_perm: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(name, rows, threshold, num_perm, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return dict(out)


def scores(cluster: list[int], truth: set[tuple[int, int]]) -> tuple[float, float, int]:
    """Recall on the planted pairs and precision of all pairs that ended up in one cluster."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(cluster):
        members.setdefault(c, []).append(i)
    found = {(a, b) for m in members.values() if len(m) > 1 for k, a in enumerate(m) for b in m[k + 1 :]}
    recall = len(found & truth) / len(truth) if truth else 1.0
    precision = len(found & truth) / len(found) if found else 1.0
    return recall, precision, len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    args = parser.parse_args()

    texts, planted = make_rows(args.rows)
    truth = {p for p in planted if jaccard(texts[p[0]], texts[p[1]]) >= args.threshold}
    print(
        f"{len(texts)} rows, {len(planted)} planted pairs, {len(truth)} of them with Jaccard ≥ "
        f"{args.threshold} on {SHINGLE}-word shingles; {args.num_perm} permutations"
    )
    results = {
        name: measure(name, args.rows, args.threshold, args.num_perm) for name in ("tuneforge", "datasketch")
    }
    print(f"{'':12}{'rows/s':>10}{'seconds':>9}{'recall':>8}{'precision':>11}{'pairs':>8}{'peak MiB':>10}")
    for name, r in results.items():
        recall, precision, pairs = scores(r["cluster"], truth)
        r["rate"] = len(texts) / r["seconds"]
        print(
            f"{name:12}{r['rate']:>10,.0f}{r['seconds']:>9.2f}{recall:>8.4f}{precision:>11.4f}{pairs:>8}"
            f"{r['peak_mib']:>10.1f}"
        )
    ratio = results["tuneforge"]["rate"] / results["datasketch"]["rate"]
    print(f"speed ratio tuneforge / datasketch: {ratio:.1f}x (goal: >= 3x at equal or better recall)")


if __name__ == "__main__":
    main()
