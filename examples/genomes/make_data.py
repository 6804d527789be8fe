"""Make a Parquet file of synthetic DNA sequences, 300 bases to 1,000,000 bases long.

    python make_data.py data                      # 20,000 sequences, about 300 million bases
    python make_data.py data --n 50               # 50 sequences, for a quick look
    python make_data.py data --add-long 1         # the same, and one more of 1,000,000 bases

Writes ``<folder>/sequences.parquet`` with two text columns, ``seq_id`` (``seq00000``,
...) and ``seq`` (A, C, G, T, and a run of 60 N, an unsequenced gap, in every tenth
sequence), in row groups of ``--rows-per-group`` rows (default 500). The lengths are
log-normal (median 7,400 bases, σ = 1.2 in log, mean about 15,000), clipped to 300 ..
1,000,000, the first one 300 and the second 1,000,000 bases; ``--add-long K`` appends
K more sequences of 1,000,000 bases. Base composition varies from sequence to
sequence (GC content 35 % to 65 %). The file is written one row group at a time, and
the same arguments give the same sequences.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHORTEST, LONGEST = 300, 1_000_000
MEDIAN, SIGMA = 7_400, 1.2


def lengths(n: int, seed: int = 3, add_long: int = 0) -> np.ndarray:
    """The sequence lengths: log-normal, clipped, the first 300 and the second 1,000,000."""
    rng = np.random.default_rng([seed, 0])
    out = np.clip(rng.lognormal(np.log(MEDIAN), SIGMA, n), SHORTEST, LONGEST).astype(np.int64)
    out[: min(n, 2)] = [SHORTEST, LONGEST][: min(n, 2)]
    return np.concatenate([out, np.full(add_long, LONGEST, np.int64)])


def sequence(i: int, length: int, seed: int = 3) -> str:
    """Sequence ``i``: random bases with its own GC content, a gap of 60 N in every tenth."""
    rng = np.random.default_rng([seed, 1, i])
    gc = rng.uniform(0.35, 0.65)
    p = np.array([1 - gc, gc, gc, 1 - gc]) / 2  # A, C, G, T
    bases = np.frombuffer(b"ACGT", np.uint8)[rng.choice(4, size=length, p=p)]
    if i % 10 == 9:
        start = int(rng.integers(0, max(1, length - 60)))
        bases[start : start + 60] = ord("N")
    return bases.tobytes().decode("ascii")


def make(folder: Path, n: int = 20_000, rows_per_group: int = 500, add_long: int = 0, seed: int = 3) -> Path:
    """Write ``folder/sequences.parquet``; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sequences.parquet"
    sizes = lengths(n, seed, add_long)
    schema = pa.schema([("seq_id", pa.string()), ("seq", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(sizes), rows_per_group):
            rows = range(start, min(start + rows_per_group, len(sizes)))
            table = pa.table(
                {
                    "seq_id": [f"seq{i:05d}" for i in rows],
                    "seq": [sequence(i, int(sizes[i]), seed) for i in rows],
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=rows_per_group)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="where to write sequences.parquet (made if need be)")
    p.add_argument("--n", type=int, default=20_000, help="number of sequences (default 20000)")
    p.add_argument("--rows-per-group", type=int, default=500, help="rows per Parquet row group (default 500)")
    p.add_argument("--add-long", type=int, default=0, help="append this many sequences of 1,000,000 bases")
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)
    path = make(args.folder, args.n, args.rows_per_group, args.add_long, args.seed)
    total = int(lengths(args.n, args.seed, args.add_long).sum())
    print(f"{args.n + args.add_long:,} sequences, {total:,} bases, in {path}")


if __name__ == "__main__":
    main()
