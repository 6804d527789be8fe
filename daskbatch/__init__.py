"""daskbatch: run a numerical core over millions of parameter sets with Dask.

Results stream into a resumable Zarr store and come back as an xarray Dataset.

Examples
--------
>>> import daskbatch as db
>>> @db.kernel(outputs={"y": db.Output()})
... def f(a, b):
...     return a * b
>>> space = db.Grid(a=[1.0, 2.0], b=[10.0, 20.0, 30.0])
"""

from __future__ import annotations

__version__ = "0.1.0"

from .distributions import LogNormal, LogUniform, Normal, Uniform
from .engine import RunResult, StoreStatus, open, plan, run, status
from .errors import DaskbatchError
from .kernel import STATUS, Kernel, Output, kernel
from .plan import Plan
from .space import Grid, MonteCarlo, Space, Table

__all__ = [
    "STATUS",
    "DaskbatchError",
    "Grid",
    "Kernel",
    "LogNormal",
    "LogUniform",
    "MonteCarlo",
    "Normal",
    "Output",
    "Plan",
    "RunResult",
    "Space",
    "StoreStatus",
    "Table",
    "Uniform",
    "__version__",
    "kernel",
    "open",
    "plan",
    "run",
    "status",
]
