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

from .analysis import compare, convergence, export, outliers, summarize
from .distributions import (
    Beta,
    Choice,
    Constant,
    LogNormal,
    LogUniform,
    MultivariateNormal,
    Normal,
    Scipy,
    Triangular,
    TruncatedNormal,
    Uniform,
)
from .engine import RunResult, StoreStatus, open, plan, run, status
from .errors import DaskbatchError
from .kernel import STATUS, Kernel, Output, kernel
from .plan import Plan
from .report import report
from .space import Grid, Halton, LatinHypercube, MonteCarlo, Product, Sobol, Space, Table
from .validate import ValidationError, ValidationReport, validate

__all__ = [
    "STATUS",
    "Beta",
    "Choice",
    "Constant",
    "DaskbatchError",
    "Grid",
    "Halton",
    "Kernel",
    "LatinHypercube",
    "LogNormal",
    "LogUniform",
    "MonteCarlo",
    "MultivariateNormal",
    "Normal",
    "Output",
    "Plan",
    "Product",
    "RunResult",
    "Scipy",
    "Sobol",
    "Space",
    "StoreStatus",
    "Table",
    "Triangular",
    "TruncatedNormal",
    "Uniform",
    "ValidationError",
    "ValidationReport",
    "__version__",
    "compare",
    "convergence",
    "export",
    "kernel",
    "open",
    "outliers",
    "plan",
    "report",
    "run",
    "status",
    "summarize",
    "validate",
]
