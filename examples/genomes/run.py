"""The genomes example from Python: codon counts per sequence, then the totals.

    python make_data.py data
    python run.py

The same run as ``daskbatch run codons.toml``, then the codon totals over all
sequences, their frequencies, and the relative synonymous codon usage of leucine.
"""

from pathlib import Path

from kernel import count_codons

import daskbatch as db

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":  # worker processes re-import this script
    space = db.Table(HERE / "data" / "sequences.parquet")  # read in the workers, block by block
    print(db.run(count_codons, space, HERE / "codons.zarr"))

    ds = db.open(HERE / "codons.zarr")  # codons (sample, codon), n_codons, gc_content; seq_id label
    ok = ds.status == db.STATUS.ok
    totals = ds.codons.where(ok, 0).sum("sample").compute()  # one dask reduction, chunk by chunk
    frequency = totals / totals.sum()
    print(frequency.to_series().sort_values(ascending=False).head(10))

    leucine = ["TTA", "TTG", "CTT", "CTC", "CTA", "CTG"]
    used = totals.sel(codon=leucine)
    print("RSCU of leucine:", (used / used.mean()).round(3).to_series().to_dict())
