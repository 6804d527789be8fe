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

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .callbacks import Callback
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
from .failures import failures  # eager: the submodule's name would shadow the function
from .hpc import JobQueue
from .kernel import STATUS, Kernel, Output, kernel
from .plan import Plan
from .reductions import Aggregation, Converged, Exceedance, Histogram, Quantiles
from .space import Files, Grid, Halton, LatinHypercube, MonteCarlo, Product, Saltelli, Sobol, Space, Table

if TYPE_CHECKING:
    from .analysis import compare, convergence, export, outliers, summarize
    from .lazy import apply
    from .pipeline import FromStore, Pipeline, Stage
    from .reports import report
    from .sensitivity import sobol_indices
    from .validation import ValidationError, ValidationReport, validate

# Imported when first used: a worker process that runs block tasks never loads the
# analysis, report or validation code (nor pandas and the report's templates).
_LAZY = {
    "apply": "lazy",
    "FromStore": "pipeline",
    "Pipeline": "pipeline",
    "Stage": "pipeline",
    "sobol_indices": "sensitivity",
    "compare": "analysis",
    "convergence": "analysis",
    "export": "analysis",
    "outliers": "analysis",
    "summarize": "analysis",
    "report": "reports",
    "ValidationError": "validation",
    "ValidationReport": "validation",
    "validate": "validation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'daskbatch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "STATUS",
    "Aggregation",
    "Beta",
    "Callback",
    "Choice",
    "Constant",
    "Converged",
    "DaskbatchError",
    "Exceedance",
    "Files",
    "FromStore",
    "Grid",
    "Halton",
    "Histogram",
    "JobQueue",
    "Kernel",
    "LatinHypercube",
    "LogNormal",
    "LogUniform",
    "MonteCarlo",
    "MultivariateNormal",
    "Normal",
    "Output",
    "Pipeline",
    "Plan",
    "Product",
    "Quantiles",
    "RunResult",
    "Saltelli",
    "Scipy",
    "Sobol",
    "Space",
    "Stage",
    "StoreStatus",
    "Table",
    "Triangular",
    "TruncatedNormal",
    "Uniform",
    "ValidationError",
    "ValidationReport",
    "__version__",
    "apply",
    "compare",
    "convergence",
    "export",
    "failures",
    "kernel",
    "open",
    "outliers",
    "plan",
    "report",
    "run",
    "sobol_indices",
    "status",
    "summarize",
    "validate",
]
