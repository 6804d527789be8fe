"""The signals example from Python: both batches, their outliers, and the comparison.

    python make_data.py batch_a
    python make_data.py batch_b --batch B
    python run.py

The same runs as ``daskbatch run batch_a.toml`` and ``batch_b.toml`` (on threads: the
kernel is declared thread-safe), then the summary of batch A, the captures whose rise
time is an outlier, and what changed from batch A to batch B.
"""

from pathlib import Path

from kernel import measure

import daskbatch as db

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for batch in ("a", "b"):
        space = db.Files(str(HERE / f"batch_{batch}" / "*.npy"))
        result = db.run(
            measure, space, HERE / f"batch_{batch}.zarr", cluster="threads", constants={"sample_rate": 1e7}
        )
        print(result)

    summary = db.summarize(HERE / "batch_a.zarr")
    for name in ("amplitude", "frequency", "rise_time"):
        mean, sd = (float(summary[name].sel(stat=s)) for s in ("mean", "std"))
        print(f"{name:10s} {mean:.4g} ± {sd:.2g} {summary[name].attrs.get('units', '')}")

    slow = db.outliers(HERE / "batch_a.zarr", "rise_time")  # IQR rule, the most extreme first
    slow["file"] = [Path(p).name for p in db.open(HERE / "batch_a.zarr").path.values[slow["sample"]]]
    print(f"{slow.attrs['total']} outliers of the rise time:")
    print(slow.to_string(index=False))

    change = db.compare(HERE / "batch_a.zarr", HERE / "batch_b.zarr")  # one row per output
    print(change[["mean a", "mean b", "mean change %", "ks p-value"]].to_string())
