"""A self-contained HTML report of a store, with bokeh plots.

``daskbatch report STORE -o report.html`` (or :func:`report`): the totals, a histogram
per scalar output, the quantile bands of every curve output, the convergence of the
first scalar output, parameter-against-output scatter plots for the parameters that
matter most, the failures by their inputs (file names, parameter values) with their
messages, and the run's provenance. BokehJS is inlined, so the file opens anywhere
without a network. Every statistic comes from
dask reductions or a bounded random subsample, never from loading an output whole,
and counts only committed blocks (the samples of a block without its commit marker
are pending), as ``daskbatch status`` does.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import _is_number, _open, _scalar, convergence, summarize
from .errors import DaskbatchError
from .fstools import clear_partial
from .kernel import STATUS

__all__ = ["report"]

#: Points drawn in a scatter plot (a random subsample of the ok samples).
SCATTER_POINTS = 5000

# Filled by the page once BokehJS has drawn: the number of canvases with pixels on
# them, so that a headless browser (and a test) can tell that the plots rendered.
_RENDER_CHECK = """
<div id="daskbatch-render-check" data-plots="@PLOTS@" style="display:none">pending</div>
<script>
(function () {
  function canvases(root, out) {
    root.querySelectorAll("*").forEach(function (el) {
      if (el.tagName === "CANVAS") out.push(el);
      if (el.shadowRoot) canvases(el.shadowRoot, out);
    });
    return out;
  }
  function check() {
    var drawn = 0, all = canvases(document, []);
    all.forEach(function (c) {
      try {
        var d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        for (var i = 3; i < d.length; i += 4) { if (d[i] !== 0) { drawn += 1; break; } }
      } catch (e) {}
    });
    document.getElementById("daskbatch-render-check").textContent =
      "canvases=" + all.length + " drawn=" + drawn;
  }
  var tries = 0;
  function poll() { check(); tries += 1; if (tries < 60) setTimeout(poll, 500); }
  window.addEventListener("load", function () { setTimeout(poll, 500); });
})();
</script>
"""


def _histogram(values, name: str, lo: float, hi: float, bins: int = 50):
    import dask.array as da
    from bokeh.plotting import figure

    if not np.isfinite(lo) or not np.isfinite(hi):
        return None
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = da.histogram(values[~da.isnan(values)], bins=bins, range=(lo, hi))
    counts = counts.compute()
    p = figure(
        title=f"{name}: histogram of the ok samples", height=280, width=520, tools="pan,wheel_zoom,reset,save"
    )
    p.quad(top=counts, bottom=0, left=edges[:-1], right=edges[1:], fill_color="#1f77b4", line_color="white")
    p.xaxis.axis_label, p.yaxis.axis_label = name, "samples"
    return p


def _bands(summary, name: str):
    from bokeh.plotting import figure

    v = summary[name]
    core = [d for d in v.dims if d != "stat"]
    if len(core) != 1:
        v = v.stack(_i=core) if core else v
        x = np.arange(v.sizes.get("_i", 1))
        label = " × ".join(core) + " (flattened)"
    else:
        coord = summary[core[0]] if core[0] in summary.coords else None
        x = coord.values if coord is not None and coord.dtype.kind in "iuf" else np.arange(v.sizes[core[0]])
        label = core[0]
    lo, mid, hi = (np.asarray(v.sel(stat=s).values, dtype=float).ravel() for s in ("p10", "p50", "p90"))
    positive = bool(np.all(x > 0)) and x.size > 2 and x.max() / x.min() > 100
    pos_y = bool(np.all(lo > 0)) and np.nanmax(hi) / max(np.nanmin(lo), 1e-300) > 100
    p = figure(
        title=f"{name}: median and p10–p90 band over the samples",
        height=320,
        width=520,
        x_axis_type="log" if positive else "linear",
        y_axis_type="log" if pos_y else "linear",
        tools="pan,wheel_zoom,reset,save",
    )
    p.varea(x=x, y1=lo, y2=hi, fill_color="#1f77b4", fill_alpha=0.25, legend_label="p10–p90")
    p.line(x=x, y=mid, line_color="#1f77b4", line_width=2, legend_label="median")
    p.xaxis.axis_label, p.yaxis.axis_label = label, name
    return p


def _convergence(data, name: str):
    from bokeh.plotting import figure

    c = convergence(data, name)
    n, m, se = c.n.values, c["mean"].values, c.sem.values
    p = figure(
        title=f"{name}: running mean ± 2 standard errors",
        height=280,
        width=520,
        x_axis_type="log",
        tools="pan,wheel_zoom,reset,save",
    )
    p.varea(x=n, y1=m - 2 * se, y2=m + 2 * se, fill_color="#ff7f0e", fill_alpha=0.25)
    p.line(x=n, y=m, line_color="#ff7f0e", line_width=2)
    p.xaxis.axis_label, p.yaxis.axis_label = "ok samples", f"mean of {name}"
    return p


def _influence(ds, info: dict, name: str, rng: np.random.Generator):
    """Scatter plots of the (up to three) scalar parameters with the largest rank
    correlation with output ``name``, on a random subsample."""
    from bokeh.plotting import figure
    from scipy import stats

    dims = list(info["layout"]["batch_dims"])
    total = int(np.prod(info["layout"]["batch_shape"]))
    take = np.sort(rng.choice(total, size=min(total, SCATTER_POINTS), replace=False))
    pos = np.unravel_index(take, tuple(info["layout"]["batch_shape"]))
    y = _scalar(ds, info, name).vindex[take].compute()
    ok = ~np.isnan(y)
    candidates = {}
    for pname in ds.data_vars:
        if pname in info["kernel"]["outputs"] or pname == "status":
            continue
        var = ds[pname]
        if var.dtype.kind not in "iuf" or not set(var.dims) <= set(dims):
            continue
        idx = tuple(pos[dims.index(d)] for d in var.dims)
        candidates[pname] = np.asarray(var.data.vindex[idx].compute(), dtype=float)
    for d in dims:  # grid axes (batch coordinates) count as parameters too; indices do not
        coord = ds[d].values
        if (
            coord.dtype.kind in "iuf"
            and d not in candidates
            and not np.array_equal(coord, np.arange(coord.size))
        ):
            candidates[d] = coord[pos[dims.index(d)]].astype(float)
    scores = {}
    for pname, x in candidates.items():
        keep = ok & np.isfinite(x)
        if keep.sum() > 2 and np.ptp(x[keep]) > 0:
            rho = stats.spearmanr(x[keep], y[keep]).statistic
            if np.isfinite(rho):
                scores[pname] = abs(float(rho))
    plots = []
    for pname in sorted(scores, key=lambda k: -scores[k])[:3]:
        x = candidates[pname]
        p = figure(
            title=f"{name} against {pname} (|Spearman ρ| = {scores[pname]:.2f})",
            height=280,
            width=520,
            tools="pan,wheel_zoom,box_zoom,reset,save",
        )
        p.scatter(x[ok], y[ok], size=3, alpha=0.4, color="#2ca02c")
        p.xaxis.axis_label, p.yaxis.axis_label = pname, name
        plots.append(p)
    return plots


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='db'>{cells}</table>"


def _cell(value: Any) -> str:
    """A value as an escaped table cell: floats short, missing values empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float | np.floating):
        return html.escape(f"{float(value):.6g}")
    return html.escape(str(value))


def _failures_html(store: Any) -> str:
    """Every failure by its inputs (its file, or its coordinates and parameters), its
    status and message, the first :data:`REPORT_FAILURES` of them; every value escaped."""
    from .failures import failures, identity_columns

    df = failures(store)
    n, total = len(df), int(df.attrs.get("n_samples", 0))
    ident = identity_columns(df)
    params = [
        c for c in df.columns if c not in ident and c not in ("status", "error", "message", "traceback")
    ]
    columns = [*ident, *params[: max(0, REPORT_INPUT_COLUMNS - len(ident))], "status", "error", "message"]
    shown = df.head(REPORT_FAILURES)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [*columns, "traceback"])
    body = []
    for i in range(len(shown)):
        cells = "".join(f"<td>{_cell(shown[c].iloc[i])}</td>" for c in columns)
        tb = shown["traceback"].iloc[i]
        tb_cell = (
            f"<details><summary>show</summary><pre>{html.escape(str(tb))}</pre></details>"
            if isinstance(tb, str) and tb
            else ""
        )
        body.append(f"<tr>{cells}<td>{tb_cell}</td></tr>")
    more = (
        f"; the first {len(shown):,} are shown: <code>daskbatch failures "
        f"{html.escape(shlex.quote(str(store)))} --csv</code> writes them all"
        if n > len(shown)
        else ""
    )
    title = f"<h2>Failures: {n:,} of {total:,} samples</h2>"
    note = f"<p>{html.escape(str(df.attrs['note']))}</p>" if df.attrs.get("note") else ""
    return (
        title
        + f"<p>By their inputs, in sample order{more}.</p>"
        + note
        + f"<table class='db'><tr>{head}</tr>{''.join(body)}</table>"
    )


#: Failures a report lists (``daskbatch failures STORE --csv`` writes them all).
REPORT_FAILURES = 200
#: Columns of inputs (coordinates, parameters) a report's failures show.
REPORT_INPUT_COLUMNS = 8


_STYLE = (
    "<style>table.db{border-collapse:collapse;font:13px sans-serif}"
    "table.db th,table.db td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
    "h2{font:bold 16px sans-serif;margin:18px 0 6px}</style>"
)


def _report_path(path: str | os.PathLike[str]) -> Path:
    """The report's path, checked: an .html file in a folder that exists (a spec file, a
    store, a script are never written over by a report)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in (".html", ".htm"):
        raise DaskbatchError(
            f"report: the output {str(path)!r} is {'a folder' if path.is_dir() else 'not an .html file'}; "
            "give a path ending in .html (-o report.html)"
        )
    if not path.parent.is_dir():
        raise DaskbatchError(f"report: the folder of {str(path)!r} does not exist")
    return path


def report(store: str | os.PathLike[str], path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a self-contained HTML report of ``store`` to ``path`` (ending in ``.html``:
    never a spec file or a store written over); returns the path."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import Div
    from bokeh.resources import INLINE

    from .engine import status

    path = _report_path(path)
    ds, info = _open(store)
    st = status(store)
    summary = summarize(ds)
    outputs = info["kernel"]["outputs"]
    scalars = [k for k, o in outputs.items() if _is_number(o)]
    curves = [k for k, o in outputs.items() if o["shape"] and k in summary.data_vars]
    rng = np.random.default_rng(seed)
    parts: list[Any] = []
    s = st.samples
    done = st.n_samples - s["pending"]
    parts.append(
        Div(
            text=_STYLE
            + f"<h1 style='font:bold 20px sans-serif'>daskbatch report: {html.escape(str(store))}</h1>"
            + _table(
                [
                    ("kernel", info["kernel"]["identity"]),
                    ("samples", f"{st.n_samples:,} in {st.blocks_total:,} blocks ({st.blocks_done:,} done)"),
                    (
                        "status",
                        ", ".join(f"{s[k.name]:,} {k.name}" for k in STATUS)
                        + (f"; success rate {s['ok'] / done:.2%} of those run" if done else ""),
                    ),
                ]
            )
        )
    )
    stat_rows = []
    for k in scalars:
        v = summary[k]
        stat_rows.append(
            (k, "  ".join(f"{name} {float(v.sel(stat=name)):.4g}" for name in summary.stat.values.tolist()))
        )
    if stat_rows:
        parts.append(Div(text="<h2>Scalar outputs</h2>" + _table(stat_rows)))
    plots = []
    for k in scalars:
        v = summary[k]
        h = _histogram(_scalar(ds, info, k), k, float(v.sel(stat="min")), float(v.sel(stat="max")))
        if h is not None:
            plots.append(h)
    for k in curves:
        if summary[k].size:  # not a ragged output empty in every sample
            plots.append(_bands(summary, k))
    if scalars and int(summary[scalars[0]].sel(stat="count")) >= 2:
        plots.append(_convergence(ds, scalars[0]))
    if scalars and s["ok"] > 2:
        plots += _influence(ds, info, scalars[0], rng)
    if plots:
        parts.append(Div(text="<h2>Plots</h2>"))
        parts += [row(*plots[i : i + 2]) for i in range(0, len(plots), 2)]
    if st.n_failed:
        parts.append(Div(text=_failures_html(store), width=1040))
    history = info.get("history") or []
    prov = [
        ("daskbatch version", str(info.get("version", ""))),
        ("kernel code sha256", str((info.get("kernel_code") or {}).get("sha256", ""))),
        ("kernel code covers", ", ".join((info.get("kernel_code") or {}).get("parts", {}))[:2000]),
        ("kernel file", str(info.get("kernel_file", ""))),
        ("seed", str(info.get("seed"))),
        ("space", json.dumps(info.get("space_spec"), default=str)[:2000]),
        ("constants", json.dumps(info.get("constants"), default=str)[:2000]),
    ]
    for i, h in enumerate(history):
        ch = h.get("kernel_changed")
        if ch:
            prov.append(
                (
                    f"run {i + 1}: kernel code changed",
                    f"went on with new code ({ch.get('from', '')[:12]} -> {ch.get('to', '')[:12]}; "
                    f"{', '.join(ch.get('parts', []))}): blocks committed before used the old code",
                )
            )
        prov.append((f"run {i + 1}", json.dumps(h, default=str)[:1000]))
    parts.append(Div(text="<h2>Provenance</h2>" + _table(prov), width=1040))
    doc = file_html(column(*parts), resources=INLINE, title=f"daskbatch report: {Path(str(store)).name}")
    head, tail = doc.rsplit("</body>", 1)  # the last one: the inlined BokehJS holds the string too
    doc = head + _RENDER_CHECK.replace("@PLOTS@", str(len(plots))) + "</body>" + tail
    tmp = path.with_name(path.name + ".partial")
    clear_partial(tmp)  # one a stopped report left: never written through
    try:
        tmp.write_text(doc, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
