"""Codon counts of one DNA sequence: the kernel of the genomes example.

``count_codons(seq)`` reads the sequence in frame 1 (bases 1-3, 4-6, ...), counts each
of the 64 codons with numpy (a lookup table from bytes to 0..3 and one ``bincount``),
and skips the codons that hold anything but A, C, G or T (an ``N`` of an unsequenced
gap, say); a trailing incomplete codon is left out. Upper and lower case count alike.
A million-base sequence takes a few milliseconds and a few bytes of memory per base.
"""

from __future__ import annotations

from itertools import product

import numpy as np

import daskbatch as db

#: the 64 codons, AAA, AAC, AAG, AAT, ACA, ... TTT: index 16 a + 4 b + c with A=0, C=1, G=2, T=3
CODONS = ["".join(c) for c in product("ACGT", repeat=3)]
_CODE = np.full(256, 255, np.uint8)
for _i, _base in enumerate("ACGT"):
    _CODE[ord(_base)] = _CODE[ord(_base.lower())] = _i
#: G or C bases in each codon
_GC = np.array([sum(b in "GC" for b in c) for c in CODONS])


def codon_counts(seq: str) -> np.ndarray:
    """The 64 codon counts of ``seq`` in frame 1 (int64, in the order of :data:`CODONS`)."""
    raw = np.frombuffer(seq.encode("ascii", errors="replace"), np.uint8)
    codes = _CODE[raw[: len(raw) // 3 * 3]].reshape(-1, 3)
    whole = (codes != 255).all(axis=1)
    index = codes[whole].astype(np.intp) @ np.array([16, 4, 1])
    return np.bincount(index, minlength=64).astype(np.int64)


@db.kernel(
    outputs={
        "codons": db.Output(dims=("codon",), shape=(64,), dtype="int64", coords={"codon": CODONS}),
        "n_codons": db.Output(dtype="int64"),
        "gc_content": db.Output(),
    },
    threadsafe=True,
)
def count_codons(seq):
    """Codon counts, their total, and the GC content of one sequence.

    Parameters
    ----------
    seq
        The bases, as text.

    Returns
    -------
    dict
        ``codons`` (64 counts, the codon coordinate names them), ``n_codons`` (their
        sum) and ``gc_content`` (the fraction of G and C among the counted codons'
        bases; NaN when there are none).
    """
    counts = codon_counts(seq)
    total = int(counts.sum())
    gc = float(counts @ _GC) / (3 * total) if total else float("nan")
    return {"codons": counts, "n_codons": total, "gc_content": gc}
