"""The notebooks under notebooks/, run top to bottom as a user runs them (each within two
minutes here, committed without outputs), and what a notebook user sees: the progress as a
widget or a text bar (never a warning), the dashboard as a link, runs and stores as HTML
tables, and an interrupted cell that says to run it again."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import daskbatch as db

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: what each notebook teaches, in order (docs/notebooks.md lists them too)
EXPECTED = [
    "01-quickstart",
    "02-tem1d-monte-carlo",
    "03-tem1d-parameter-grid",
    "04-folder-of-files",
    "05-failures-timeouts-resume",
    "06-reductions-and-convergence",
    "07-on-a-cluster",
]
#: the notebooks that run on daskbatch's local cluster with progress shown
ON_A_LOCAL_CLUSTER = {"02-tem1d-monte-carlo", "03-tem1d-parameter-grid", "05-failures-timeouts-resume"}
SECONDS_PER_NOTEBOOK = 120
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(autouse=True)
def _jupyter_paths(monkeypatch):
    # jupyter_core warns about its coming move to platformdirs unless this is set
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")


def _client(nb, cwd: Path, timeout: int = SECONDS_PER_NOTEBOOK, **kw):
    """A client that runs ``nb`` in a fresh kernel with ``cwd`` as its folder; ``timeout``
    is per cell."""
    from nbclient import NotebookClient

    return NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}, **kw
    )


def _outputs(cell) -> list[dict]:
    return list(cell.get("outputs", []))


def _text(outputs, name: str | None = None) -> str:
    """Every stream (of ``name``, or all) and text/plain output, joined."""
    parts = []
    for o in outputs:
        if o["output_type"] == "stream" and name in (None, o["name"]):
            parts.append(o["text"])
        elif name is None and "data" in o:
            parts.append(str(o["data"].get("text/plain", "")))
    return "".join(parts)


def _html(outputs) -> str:
    return "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)


def _notebook(*cells: str):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


# --------------------------------------------------------------------------- the notebooks


def test_the_seven_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    """Outputs stripped in git: no outputs, no execution counts, no widget state."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
    counted = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")]
    assert with_outputs == [] and counted == [], (
        f"{path.name}: cells {with_outputs or counted} were saved with outputs; clear them "
        f"(jupyter nbconvert --clear-output --inplace {path.name})"
    )
    assert "widgets" not in nb.metadata, f"{path.name} keeps widget state: clear the outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    """Top to bottom in a fresh kernel, in a folder of its own, within two minutes."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    _client(nb, tmp_path).execute()
    seconds = time.monotonic() - start
    assert seconds < SECONDS_PER_NOTEBOOK, f"{path.name} took {seconds:.0f} s"
    outputs = [o for c in nb.cells for o in _outputs(c)]
    expected_errors = [
        c for c in nb.cells if "raises-exception" in c.get("metadata", {}).get("tags", [])
    ]  # the interrupted cell of notebook 5
    errors = [
        o for c in nb.cells if c not in expected_errors for o in _outputs(c) if o["output_type"] == "error"
    ]
    assert not errors
    text = _text(outputs)
    assert "IProgress not found" not in text and "TqdmWarning" not in text
    if path.stem in ON_A_LOCAL_CLUSTER:
        # the dashboard as a link, and the progress as a widget (ipywidgets is in the dev extra)
        html = _html(outputs)
        assert 'daskbatch: Dask dashboard at <a href="http://127.0.0.1:' in html
        assert any(WIDGET in o.get("data", {}) for o in outputs)
        assert "<table><caption>daskbatch run</caption>" in html
    if path.stem == "05-failures-timeouts-resume":
        (stopped,) = expected_errors
        (error,) = [o for o in _outputs(stopped) if o["output_type"] == "error"]
        assert error["ename"] == "KeyboardInterrupt"
        assert "Run the cell again to continue" in _text(_outputs(stopped), "stderr")
        assert "run the notebook cell that called daskbatch.run again" in text
        assert "daskbatch resume" not in text
    if path.stem == "07-on-a-cluster":  # the job script and the command, submitting nothing
        assert "#SBATCH --time=12:00:00" in text and "sbatch --parsable" in text, text[-2000:]


@pytest.mark.slow
def test_the_cluster_notebook_runs_its_sweep_on_slurm(slurm, tmp_path):
    """Where a SLURM is reachable, notebook 7 runs a sweep on it (otherwise it says so)."""
    import nbformat

    nb = nbformat.read(NOTEBOOK_DIR / "07-on-a-cluster.ipynb", as_version=4)
    try:
        _client(nb, tmp_path, timeout=300).execute()
    finally:
        slurm.cancel_all()
    text = _text([o for c in nb.cells for o in _outputs(c)])
    assert "no SLURM cluster reachable" not in text
    assert "samples/s on slurm (2 jobs" in text, text[-3000:]
    assert db.status(tmp_path / "stores" / "newton_slurm.zarr").complete


# --------------------------------------------------------------------------- what a user sees


SWEEP = """
import daskbatch as db
import numpy as np
import time

@db.kernel(outputs={"y": db.Output()})
def slow(x):
    time.sleep(0.01)
    return x * 2.0
"""


@pytest.mark.slow
@pytest.mark.parametrize("widgets", [True, False], ids=["ipywidgets", "no-ipywidgets"])
def test_progress_is_a_widget_or_a_text_bar_never_a_warning(tmp_path, widgets):
    if widgets:
        pytest.importorskip("ipywidgets")
    hide = "" if widgets else "import sys; sys.modules['ipywidgets'] = None  # as if not installed\n"
    nb = _notebook(
        hide + SWEEP,
        f"db.run(slow, db.Grid(x=np.arange(60.0)), {str(tmp_path / 'p.zarr')!r}, cluster='serial', chunk_size=10)",
    )
    _client(nb, tmp_path).execute()
    outputs = _outputs(nb.cells[1])
    text = _text(outputs)
    assert "IProgress" not in text and "Warning" not in text, text
    if widgets:
        assert [o for o in outputs if WIDGET in o.get("data", {})]
        assert "|" not in _text(outputs, "stderr")
    else:
        assert not [o for o in outputs if WIDGET in o.get("data", {})]
        bar = _text(outputs, "stderr")
        assert "100%|" in bar and "60/60" in bar and "failed=0" in bar, bar
    assert "<table><caption>daskbatch run</caption>" in _html(outputs)


@pytest.mark.slow
def test_an_interrupted_cell_says_run_it_again_and_running_it_again_resumes(tmp_path):
    """The kernel is interrupted (as the stop button does: SIGINT) while the run is going;
    the cell says to run it again, the store says so too, and running it again resumes."""
    store = tmp_path / "i.zarr"
    run = f"result = db.run(slow, db.Grid(x=np.arange(300.0)), {str(store)!r}, cluster='serial', chunk_size=10)\nresult"
    nb = _notebook(SWEEP, run, f"db.status({str(store)!r})", run)
    client = _client(nb, tmp_path, allow_errors=True)
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        pid = client.km.provisioner.process.pid

        def interrupt_once_blocks_are_done():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if db.status(store).blocks_done >= 3:
                        break
                except Exception:  # not created yet
                    pass
                time.sleep(0.02)
            os.kill(pid, signal.SIGINT)

        interrupter = threading.Thread(target=interrupt_once_blocks_are_done)
        interrupter.start()
        client.execute_cell(nb.cells[1], 1)
        interrupter.join()
        client.execute_cell(nb.cells[2], 2)
        client.execute_cell(nb.cells[3], 3)
    stopped = _outputs(nb.cells[1])
    assert [o["ename"] for o in stopped if o["output_type"] == "error"] == ["KeyboardInterrupt"]
    message = _text(stopped, "stderr")
    assert "blocks done and kept. Run the cell again to continue" in message, message
    assert "daskbatch resume" not in message
    status = _text(_outputs(nb.cells[2]))
    assert "state:    interrupted; run the notebook cell that called daskbatch.run again" in status, status
    again = _text(_outputs(nb.cells[3]))
    assert "state:    complete" in again and "this run: " in again, again
    done_before = int(status.split("blocks:   ")[1].split(" of")[0])
    assert 3 <= done_before < 30
    assert f"in {30 - done_before} blocks" in again  # only the missing blocks
    ds = db.open(store)
    assert (ds.y.values == 2.0 * np.arange(300.0)).all()


def test_runs_stores_and_plans_are_html_tables_and_text_in_ipython(tmp_path):
    from html import escape

    from IPython.lib.pretty import pretty

    @db.kernel(outputs={"y": db.Output()})
    def picky(x):
        if x == 3:
            raise ValueError("x=3 is refused")
        return x

    store = tmp_path / "h.zarr"
    result = db.run(picky, db.Grid(x=np.arange(8.0)), store, cluster="serial", chunk_size=4, progress=False)
    html = result._repr_html_()
    assert html.startswith("<table><caption>daskbatch run</caption>")
    for key in (
        "store",
        "kernel",
        "state",
        "this run",
        "samples",
        "blocks",
        "errors (first ones)",
        "failures",
    ):
        assert f">{key}</th>" in html, key
    assert "<progress value='2' max='2'" in html
    assert "ValueError: x=3 is refused" in html
    assert escape(f"daskbatch.failures({str(store)!r})") in html  # the Python call, in Python
    status = db.status(store)
    assert status._repr_html_().startswith("<table><caption>daskbatch store</caption>")
    # IPython's text is the summary, not the dataclass's fields
    assert pretty(result) == str(result) and pretty(status) == str(status)
    plan = db.plan(picky, db.Grid(x=np.arange(8.0)), cluster="serial", chunk_size=4)
    assert plan._repr_html_().startswith("<table><caption>daskbatch plan</caption>")
    assert pretty(plan) == str(plan)
