"""The images example from Python: the same run as ``daskbatch run images.toml``.

    python make_data.py data
    python run.py

Runs the curvature kernel over every ``data/*.pgm`` file into ``curvature.zarr``,
prints the run, the images that failed with their messages, the statistics, and the
curvature profile of the first image; writes ``curvature.csv``.
"""

from pathlib import Path

from kernel import curvature

import daskbatch as db

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":  # worker processes re-import this script
    space = db.Files(str(HERE / "data" / "*.pgm"))  # one sample per file: path, size
    result = db.run(curvature, space, HERE / "curvature.zarr", constants={"pixel_size": 0.65})
    print(result)

    failed = db.failures(HERE / "curvature.zarr")  # one row per image that failed
    print(failed[["path", "status", "message"]].to_string(index=False))

    ds = db.open(HERE / "curvature.zarr")
    ok = ds.isel(sample=(ds.status == db.STATUS.ok).values)  # the images measured
    scalars = ["mean_curvature", "max_curvature", "perimeter", "area"]
    print(ok[scalars].to_dataframe()[scalars].describe())
    first = ok.isel(sample=0)
    profile = first.curvature.values[: int(first.n_points)]  # stored padded: its own length
    name = Path(str(first.path.values)).name
    print(f"{name}: {len(profile)} curvature values (1/um), the first 5:", profile[:5])

    db.export(HERE / "curvature.zarr", HERE / "curvature.csv")
