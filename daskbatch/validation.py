"""Recompute random samples of a store sequentially and compare them with what is stored.

What users of hand-written pools do by hand ("compare the parallel results against
a sequential run on a subset"), done for them: ``daskbatch.validate(store)`` or
``daskbatch validate STORE``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DaskbatchError, SpecFileError, ValidationError, sample_label
from .kernel import STATUS

__all__ = ["ValidationError", "ValidationReport", "load_run", "validate"]


@dataclass
class ValidationReport:
    """What :func:`validate` compared and found."""

    store: str
    n_checked: int
    rtol: float
    atol: float
    #: per output: (largest absolute difference, largest relative difference)
    outputs: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: parameters whose recomputed values are not bitwise the stored ones
    params_differ: list[str] = field(default_factory=list)
    #: samples that differ beyond the tolerance (at most 10): label, what, stored, recomputed
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    n_mismatched: int = 0
    #: the parts of the kernel's code that differ from the code that wrote the store
    code_changed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.n_mismatched == 0 and not self.params_differ

    def __str__(self) -> str:
        head = (
            f"validated {self.n_checked:,} random ok samples of {self.store}: recomputed one by one "
            f"in this process (rtol={self.rtol:g}, atol={self.atol:g})"
        )
        lines = [head]
        if self.code_changed:
            lines.append(
                "  note: the kernel's code differs from the code that wrote the store "
                f"({', '.join(self.code_changed[:3])}); differences are expected"
            )
        for name, (a, r) in self.outputs.items():
            lines.append(f"  {name:20s} max abs diff {a:.3g}   max rel diff {r:.3g}")
        if self.params_differ:
            lines.append(f"  parameters not reproduced bit for bit: {self.params_differ}")
        if self.n_mismatched:
            lines.append(f"  {self.n_mismatched:,} sample(s) differ beyond the tolerance, e.g.:")
            for m in self.mismatches[:5]:
                lines.append(
                    f"    {m['sample']}: {m['what']}: stored {m['stored']}, recomputed {m['recomputed']}"
                )
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def load_run(store: str | os.PathLike[str]) -> tuple[Any, Any, dict[str, Any]]:
    """The kernel, the space and the stored run description of a store."""
    from .provenance import kernel_from_info
    from .space import Table, space_from_spec
    from .store import Store

    st = Store(store)
    info = st.require_info()
    kernel = kernel_from_info(info, str(st.path))
    spec = info["space_spec"]
    if spec.get("type") == "table" and "path" not in spec:
        # an in-memory table: its rows are in the store
        ds = st.open_dataset()
        space = Table(ds[list(spec["columns"])].drop_vars("sample", errors="ignore").load())
    else:
        space = space_from_spec(spec)
    return kernel, space, info


def _pick(
    status,
    total: int,
    n: int,
    rng: np.random.Generator,
    committed: np.ndarray | None = None,
    block_shape: tuple[int, ...] | None = None,
) -> list[tuple[int, ...]]:
    """Up to ``n`` random positions whose status is ok, reading only their status.

    With ``committed`` (one boolean per block, from the store's ledger) and the
    ``block_shape``, only positions of committed blocks are picked.
    """
    chosen: list[tuple[int, ...]] = []
    seen: set[int] = set()
    for _ in range(8):
        want = n - len(chosen)
        k = min(total, max(4 * want, 64))
        cand = np.asarray([c for c in rng.choice(total, size=k, replace=False).tolist() if c not in seen])
        if cand.size == 0:
            break
        seen.update(cand.tolist())
        idx = np.unravel_index(cand, status.shape)
        ok = np.asarray(status.get_coordinate_selection(idx)) == STATUS["ok"]
        if committed is not None and block_shape is not None:
            ok &= committed[tuple(i // b for i, b in zip(idx, block_shape, strict=True))]
        chosen += [tuple(int(i[j]) for i in idx) for j in np.flatnonzero(ok)]
        if len(chosen) >= n or len(seen) >= total:
            break
    return chosen[:n]


def _load_to_validate(store: str | os.PathLike[str]) -> tuple[Any, Any, dict[str, Any]]:
    """:func:`load_run` for validate: a kernel of a script or a notebook cannot be imported
    again, and the advice is not the one to resume."""
    try:
        return load_run(store)
    except SpecFileError as e:
        if "defined in" not in str(e):
            raise
        where = "script" if "defined in the script" in str(e) else "notebook"
        raise SpecFileError(
            f"validate imports the kernel again, and the kernel of store {str(store)!r} was defined in "
            f"the {where} that ran it (as __main__), which cannot be imported: move the kernel into a "
            f"module (a .py file the {where} imports) to validate the stores it writes"
        ) from e


def validate(
    store: str | os.PathLike[str],
    n: int = 100,
    *,
    rtol: float = 1e-10,
    atol: float = 0.0,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> ValidationReport:
    """Recompute ``n`` random ok samples sequentially and compare with the store.

    Each chosen sample's parameters are produced again from the stored design
    (and must be bitwise the stored ones), the kernel is called on it in this
    process, one sample at a time, and every output is compared with the stored
    values: ``|stored - recomputed| <= atol + rtol * |recomputed|``.

    Parameters
    ----------
    store
        A store written by :func:`daskbatch.run`.
    n
        Samples to recompute (chosen at random among the ok ones, with ``seed``).
    rtol, atol
        Relative and absolute tolerance.
    seed
        Seed of the random choice of the samples.
    raise_on_failure
        Raise :class:`ValidationError` (which holds the report) when a sample
        differs; otherwise return the report with ``ok == False``.

    Returns
    -------
    ValidationReport
        What was compared and found (``ok`` is False when a sample differs).

    Raises
    ------
    ValidationError
        With ``raise_on_failure``, when a sample differs (``.report`` holds the report).
    DaskbatchError
        A bad ``n``, ``rtol`` or ``atol``; a store that cannot be read or run again.
    """
    import zarr

    from .blocktask import kernel_inputs
    from .codeid import same_code
    from .constants import recorded_constants
    from .provenance import changed_parts, kernel_code
    from .raggedstore import read_decoded
    from .store import Store

    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise DaskbatchError(f"validate: n={n!r} must be a positive number of samples, e.g. 100")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
            raise DaskbatchError(f"validate: {name}={v!r} must be a number >= 0, e.g. 1e-10")
    kernel, space, info = _load_to_validate(store)
    st = Store(store)
    root = zarr.open_group(str(st.path), mode="r", use_consolidated=False)
    status = root["status"]
    total = int(np.prod(status.shape))
    rng = np.random.default_rng(seed)
    committed = st.ledger.committed()  # the ledger first, then the status it covers
    block_shape = tuple(info["layout"]["block_shape"])
    picked = _pick(status, total, int(n), rng, committed, block_shape)
    constants = recorded_constants(info)
    nd = len(space.batch_dims)
    report = ValidationReport(str(st.path), len(picked), float(rtol), float(atol))
    stored_code = info.get("kernel_code")
    if stored_code is not None:
        now = kernel_code(kernel)
        if not same_code(stored_code, now):
            report.code_changed = changed_parts(stored_code, now)
    worst = {k: [0.0, 0.0] for k in kernel.outputs}
    for pos in picked:
        slices = tuple(slice(p, p + 1) for p in pos)
        values = space.block(slices)
        label = sample_label(space, int(np.ravel_multi_index(pos, space.batch_shape)))
        kernel_params, regenerated = kernel_inputs(values, space.params, tuple(space.batch_dims))
        for name, v in regenerated.items():
            if not np.array_equal(read_decoded(root, name, slices), v) and name not in report.params_differ:
                report.params_differ.append(name)
        res = kernel.run_block(kernel_params, (1,) * nd, constants, lambda _i, _l=label: _l)
        if res.status.reshape(-1)[0] != STATUS["ok"]:
            report.n_mismatched += 1
            err = res.errors[0]["error"] if res.errors else "not ok"
            report.mismatches.append({"sample": label, "what": "status", "stored": "ok", "recomputed": err})
            continue
        differ = _compare_outputs(kernel, res.outputs, root, slices, label, (rtol, atol), report, worst)
        report.n_mismatched += differ
    report.outputs = {k: (v[0], v[1]) for k, v in worst.items()}
    if raise_on_failure and not report.ok:
        raise ValidationError(report)
    return report


def _compare_outputs(
    kernel: Any,
    outputs: dict[str, Any],
    root: Any,
    slices: tuple[slice, ...],
    label: str,
    tolerance: tuple[float, float],
    report: ValidationReport,
    worst: dict[str, list[float]],
) -> bool:
    """Compare one recomputed sample's ``outputs`` with the values stored in ``root`` at
    ``slices``, within ``tolerance`` (rtol, atol): the first mismatches go into ``report``,
    the largest absolute and relative differences into ``worst``. Whether any output differs."""
    from .ragged import RaggedBlock
    from .raggedstore import compare_sample

    rtol, atol = tolerance
    sample_bad = False
    for name, arr in outputs.items():
        if isinstance(arr, RaggedBlock):  # ragged or text: trimmed by the stored lengths
            differ, new, old = compare_sample(kernel.outputs[name], arr, root, name, slices)
            if differ is not None:
                sample_bad = True
                if len(report.mismatches) < 10:
                    stored, recomputed = differ
                    report.mismatches.append(
                        {"sample": label, "what": name, "stored": stored, "recomputed": recomputed}
                    )
                continue
        else:
            new = np.asarray(arr, dtype=np.float64).reshape(-1)
            old = np.asarray(root[name][slices], dtype=np.float64).reshape(-1)
        diff = np.abs(old - new)
        both_nan = np.isnan(old) & np.isnan(new)
        diff[both_nan] = 0.0
        rel = np.divide(diff, np.abs(new), out=np.where(diff > 0, np.inf, 0.0), where=new != 0)
        worst[name][0] = max(worst[name][0], float(np.nanmax(diff, initial=0.0)))
        worst[name][1] = max(worst[name][1], float(np.nanmax(rel, initial=0.0)))
        bad = ~(diff <= atol + rtol * np.abs(new))
        if bad.any():
            sample_bad = True
            j = int(np.flatnonzero(bad)[0])
            if len(report.mismatches) < 10:
                report.mismatches.append(
                    {"sample": label, "what": name, "stored": float(old[j]), "recomputed": float(new[j])}
                )
    return sample_bad
