"""Every failure kept with its message, `daskbatch.failures` and `daskbatch failures`:
real stores with kernels that raise and time out, old stores, the command in a subprocess,
and the export's messages and empty cells."""

from __future__ import annotations

import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.records import MAX_ERRORS_PER_BLOCK, FailureLog
from daskbatch.store import HIDDEN, Store
from daskbatch.testing import fail_on_multiples

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
import make_format1 as fixture  # noqa: E402  (the script that wrote the format-1 stores)

RUN = {"cluster": "serial", "progress": False}


@db.kernel(outputs={"y": db.Output(), "n": db.Output(dtype="int64")})
def picky(x, w):
    """Raises for x < 0.2, spins (until its timeout) for x > 0.95, else returns."""
    if x < 0.2:
        raise ValueError(f"x={x:.4f} is below 0.2")
    if x > 0.95:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            pass
    return {"y": float(x * np.sum(w)), "n": int(x * 100)}


@db.kernel(outputs={"y": db.Output()})
def always(i):
    raise ValueError(f"sample value {float(i)!r} is not accepted by this model")


@db.kernel(outputs={"y": db.Output()})
def always_same(i):
    raise ValueError("not accepted")


PICKY = db.MonteCarlo({"x": db.Uniform(0, 1), "w": db.Normal([1, 2], 1)}, n=40, seed=11)


@pytest.fixture(scope="module")
def picky_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("f") / "picky.zarr"
    db.run(picky, PICKY, store, chunk_size=10, timeout=0.3, **RUN)
    return store


def _expected_picky():
    x = PICKY.block((slice(0, 40),))["x"]
    return np.flatnonzero(x < 0.2), np.flatnonzero(x > 0.95), x


# --------------------------------------------------------------------------- the record


def test_every_failure_is_kept_with_its_message_beyond_the_first_20_per_block(tmp_path):
    store = tmp_path / "g.zarr"
    db.run(fail_on_multiples, db.Grid(i=np.arange(300)), store, chunk_size=150, constants={"k": 3}, **RUN)
    bad = [i for i in range(1, 300) if i % 3 == 0]
    recs = Store(store).ledger.records()
    assert all(r.n_errors > MAX_ERRORS_PER_BLOCK for r in recs.values())
    assert all(len(r.errors) == MAX_ERRORS_PER_BLOCK for r in recs.values())  # full records: the first
    df = db.failures(store)
    assert df["i"].tolist() == bad and len(df) == df.attrs["n_failures"] == 99
    assert df.attrs["n_samples"] == 300 and "note" not in df.attrs
    assert df["message"].tolist() == [f"boom at i={i}" for i in bad]
    assert set(df["error"]) == {"RuntimeError"} and set(df["status"]) == {"failed"}
    # one place raised them all: every failure has the traceback, with its own message
    assert df["traceback"].map(lambda t: "raise RuntimeError" in t).all()
    assert df["traceback"].iloc[-1].endswith("RuntimeError: boom at i=297")
    assert list(df.columns) == ["i", "status", "error", "message", "traceback"]


def test_a_block_of_10000_failures_keeps_a_small_record(tmp_path):
    for kernel, limit in ((always, 250_000), (always_same, 100_000)):
        store = tmp_path / f"{kernel.name}.zarr"
        db.run(kernel, db.Grid(i=np.arange(10_000)), store, chunk_size=10_000, **RUN)
        size = (store / HIDDEN / "blocks" / "0.json").stat().st_size
        assert size < limit, (kernel.name, size)
        df = db.failures(store)
        assert len(df) == 10_000 and df["traceback"].notna().all()
        if kernel is always:
            assert df["message"].iloc[9_999] == "sample value 9999.0 is not accepted by this model"
        else:
            assert set(df["message"]) == {"not accepted"}


def test_failure_log_cuts_long_messages_and_keeps_distinct_tracebacks():
    log = FailureLog()
    for i in range(3):
        log.add(i, "failed", "ValueError", "x" * 2000)
    log.add(3, "crashed", "WorkerCrash", "the worker died")
    back = FailureLog.from_doc(json.loads(json.dumps(log.to_doc())))
    rows = list(back.entries())
    assert len(rows) == 4 and len(back.kinds) == 2
    assert len(rows[0][3]) == 500 and rows[0][3].endswith("...")
    assert rows[3][1:4] == ("crashed", "WorkerCrash", "the worker died") and rows[3][4] is None
    with pytest.raises(ValueError, match="not lists"):
        FailureLog.from_doc({"position": [1]})


# --------------------------------------------------------------------------- daskbatch.failures


def test_failures_of_a_design_give_parameters_timeouts_and_filters(picky_store):
    low, high, x = _expected_picky()
    assert low.size >= 2 and high.size >= 1
    df = db.failures(picky_store)
    assert list(df.columns) == ["sample", "w_0", "w_1", "x", "status", "error", "message", "traceback"]
    assert df["sample"].tolist() == sorted([*low, *high])
    assert np.array_equal(df["x"].to_numpy(), x[df["sample"].to_numpy()])
    failed = df[df["status"] == "failed"]
    assert failed["sample"].tolist() == low.tolist() and set(failed["error"]) == {"ValueError"}
    assert failed["message"].tolist() == [f"x={v:.4f} is below 0.2" for v in x[low]]
    assert failed["traceback"].map(lambda t: "picky" in t).all()
    timed = df[df["status"] == "timeout"]
    assert timed["sample"].tolist() == high.tolist()
    assert set(timed["error"]) == {"SampleTimeout"} and timed["traceback"].map(lambda t: t is None).all()
    assert timed["message"].str.contains("timeout of 0.3 s").all()
    assert db.failures(picky_store, status="timeout")["sample"].tolist() == high.tolist()
    assert db.failures(picky_store, status=["failed"])["sample"].tolist() == low.tolist()
    assert len(db.failures(picky_store, status="crashed")) == 0
    with pytest.raises(db.DaskbatchError, match=r"status='ok': give one of 'failed', 'timeout', 'crashed'"):
        db.failures(picky_store, status="ok")


def test_failures_accepts_a_store_and_refuses_what_is_no_store(picky_store, tmp_path):
    assert len(db.failures(Store(picky_store))) == len(db.failures(str(picky_store)))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(db.DaskbatchError, match="is not a daskbatch store") as e:
        db.failures(tmp_path / "plain")
    assert "\n" not in str(e.value)
    with pytest.raises(db.DaskbatchError, match="does not exist"):
        db.failures(tmp_path / "nothing.zarr")


def test_a_store_without_failures_gives_an_empty_frame_with_the_columns(tmp_path):
    from daskbatch.testing import affine

    store = tmp_path / "ok.zarr"
    db.run(affine, db.Grid(a=[1.0, 2.0]), store, **RUN)
    df = db.failures(store)
    assert len(df) == 0 and df.attrs["n_samples"] == 2
    assert list(df.columns) == ["a", "status", "error", "message", "traceback"]


def test_failures_by_file_of_a_table_read_from_a_file(tmp_path):
    inputs = tmp_path / "inputs.csv"
    files = [f"data/run{i:02d}.dat" for i in range(12)]
    a = np.where(np.arange(12) % 4 == 1, -1.0, 1.0) * np.arange(12)
    pd.DataFrame({"a": a, "file": files}).to_csv(inputs, index=False)

    store = tmp_path / "t.zarr"
    db.run(negative_fails, db.Table(inputs), store, chunk_size=5, **RUN)
    df = db.failures(store)
    assert df["sample"].tolist() == [1, 5, 9]
    assert df["a"].tolist() == [-1.0, -5.0, -9.0]
    assert df["file"].tolist() == [files[1], files[5], files[9]]
    assert df["message"].tolist() == [f"a={v} < 0" for v in (-1.0, -5.0, -9.0)]
    r = run_cli("failures", str(store))
    assert r.returncode == 0, r.stderr
    assert (
        "data/run05.dat" in r.stdout and "a=-5.0 < 0" in r.stdout and "3 failures of 12 samples" in r.stdout
    )
    if "a" not in db.open(store).variables:  # referenced, not copied: read from the file
        inputs.write_text("a,file\n0,x\n")  # the input changed: its values are left out, and said so
        df = db.failures(store)
        assert "a" not in df.columns and "could not be rebuilt" in df.attrs["note"]
        assert df["file"].tolist() == [files[1], files[5], files[9]]


@db.kernel(outputs={"y": db.Output()})
def negative_fails(a):
    if a < 0:
        raise ValueError(f"a={a} < 0")
    return float(a)


# --------------------------------------------------------------------------- older stores


def test_a_format1_store_lists_its_failures(tmp_path):
    path = tmp_path / "format1_grid"
    shutil.copytree(DATA / "format1_grid", path)
    assert Store(path).format == 1
    df = db.failures(path)
    st = db.status(path)
    assert len(df) == st.samples["failed"] == 4 and "note" not in df.attrs
    assert df["message"].tolist() == [f"boom at i={i}" for i in df["i"]]
    # resumed, it stays format 1 and keeps every failure of the block it computes too
    res = db.run(fail_on_multiples, fixture.GRID_SPACE, path, chunk_size=fixture.GRID_CHUNKS, **RUN)
    assert res.complete and Store(path).format == 1
    again = db.failures(path)
    assert len(again) == db.status(path).samples["failed"] and again["message"].notna().all()


def test_a_store_written_before_every_failure_was_kept_says_what_is_missing(tmp_path):
    store = tmp_path / "old.zarr"
    db.run(fail_on_multiples, db.Grid(i=np.arange(100)), store, chunk_size=100, constants={"k": 2}, **RUN)
    record = store / HIDDEN / "blocks" / "0.json"
    doc = json.loads(record.read_text())
    del doc["failures"]  # as daskbatch wrote records before: the first 20 errors only
    record.write_text(json.dumps(doc))
    df = db.failures(store)
    assert len(df) == 49
    assert df["message"].iloc[:20].tolist() == [f"boom at i={i}" for i in range(2, 42, 2)]
    assert df["message"].iloc[20:].isna().all()
    assert "29 failure(s) have no message" in df.attrs["note"]
    r = run_cli("failures", str(store), "--limit", "0")
    assert r.returncode == 0 and "(no message kept)" in r.stdout and "29 failure(s)" in r.stdout


# --------------------------------------------------------------------------- the command


def test_failures_command_prints_a_table_and_writes_csv(picky_store, tmp_path):
    low, high, x = _expected_picky()
    n = low.size + high.size
    r = run_cli("failures", str(picky_store))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["sample", "inputs", "status", "message"]  # no file: the parameters
    assert lines[-1] == f"{n} failures of 40 samples"
    first = lines[1].split()
    k = min(low[0], high[0])
    assert first[0] == str(k) and first[1] == f"x={x[k]:.4g}", lines[1]  # a vector parameter (w) is left out
    assert any("SampleTimeout: stopped after the timeout of 0.3 s" in line for line in lines)
    # --csv to a file: the whole frame, traceback included
    out = tmp_path / "f.csv"
    r = run_cli("failures", str(picky_store), "--csv", str(out))
    assert r.returncode == 0 and f"wrote {n} failure(s) of 40 samples" in r.stdout
    back = pd.read_csv(out)
    assert back.columns.tolist() == db.failures(picky_store).columns.tolist()
    assert back["sample"].tolist() == sorted([*low, *high])
    # --csv alone: to standard output; --status filters
    r = run_cli("failures", str(picky_store), "--csv", "--status", "timeout")
    assert r.returncode == 0
    assert pd.read_csv(io.StringIO(r.stdout))["sample"].tolist() == high.tolist()


def test_failures_command_refuses_a_negative_limit(picky_store, cli):
    r = cli("failures", str(picky_store), "--limit", "-1")
    assert r.returncode == 2 and "'-1' is not a whole number >= 0 (0 prints every row)" in r.stderr


def test_failures_command_exit_codes(picky_store, tmp_path, cli):
    (tmp_path / "plain").mkdir()
    r = run_cli("failures", str(tmp_path / "plain"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is not a daskbatch store" in r.stderr
    r = cli("failures", str(tmp_path / "missing.zarr"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = cli("failures", str(picky_store), "--status", "ok")
    assert r.returncode == 2  # argparse: not one of the choices


def test_status_points_to_the_failures_command(picky_store, tmp_path, cli):
    r = cli("status", str(picky_store))
    assert r.returncode == 0
    assert [line for line in r.stdout.splitlines() if "daskbatch failures" in line] == [
        f"failures: each with its inputs and message: daskbatch failures {picky_store}"
    ]
    from daskbatch.testing import affine

    ok = tmp_path / "ok.zarr"
    db.run(affine, db.Grid(a=[1.0]), ok, **RUN)
    assert "daskbatch failures" not in cli("status", str(ok)).stdout


# --------------------------------------------------------------------------- export


def test_export_has_messages_and_empty_cells_for_missing_values(picky_store, tmp_path):
    low, high, _ = _expected_picky()
    out = tmp_path / "e.csv"
    assert db.export(picky_store, out) == 40
    text = out.read_text()
    assert "-9223372036854775808" not in text and "nan" not in text.lower()
    df = pd.read_csv(out, keep_default_na=False)
    assert df.columns.tolist() == ["sample", "w_0", "w_1", "x", "status", "error", "message", "y", "n"]
    bad = df["status"] != 1
    assert df.loc[bad, "sample"].tolist() == sorted([*low, *high])
    assert (df.loc[bad, ["y", "n"]] == "").all().all()  # empty cells, not fill values
    assert (df.loc[~bad, ["error", "message"]] == "").all().all()
    assert df.loc[df["sample"] == low[0], "message"].item().endswith("is below 0.2")
    assert df.loc[df["sample"] == high[0], "error"].item() == "SampleTimeout"
    ok = pd.read_csv(out)[lambda d: d["status"] == 1]
    assert ok["n"].dtype == np.dtype("int64") or ok["n"].notna().all()
    # Parquet: nulls, integers stay integers
    db.export(picky_store, tmp_path / "e.parquet")
    pq = pd.read_parquet(tmp_path / "e.parquet")
    assert str(pq["n"].dtype) == "Int64" and pq.loc[pq["status"] != 1, "n"].isna().all()
    assert pq.loc[pq["status"] == 1, "message"].isna().all()


@db.kernel(outputs={"y": db.Output()})
def below(x):
    if x < 0.3:
        raise ValueError(f"x={x:.3f}")
    return float(x)


def test_a_store_that_grows_keeps_the_messages_of_its_old_failures(tmp_path):
    store = tmp_path / "grow.zarr"
    space = lambda n: db.MonteCarlo({"x": db.Uniform(0, 1)}, n=n, seed=3)  # noqa: E731
    db.run(below, space(25), store, chunk_size=10, **RUN)
    before = db.failures(store)
    db.run(below, space(40), store, chunk_size=10, **RUN)  # the last block (20..24) is completed
    after = db.failures(store)
    x = space(40).block((slice(0, 40),))["x"]
    assert after["sample"].tolist() == np.flatnonzero(x < 0.3).tolist()
    assert after["message"].tolist() == [f"x={v:.3f}" for v in x[x < 0.3]]
    assert after.head(len(before))["message"].tolist() == before["message"].tolist()


# --------------------------------------------------------------------------- status lines


@db.kernel(outputs={"n": db.Output(dtype="int64")})
def text_length(path):
    text = Path(path).read_text()
    if "bad" in text:
        raise ValueError("unreadable contents")
    return len(text)


@db.kernel(outputs={"gc": db.Output()})
def gc_share(seq):
    if "N" in seq:
        raise ValueError("ambiguous base")
    return (seq.count("G") + seq.count("C")) / len(seq)


def test_status_names_each_failed_sample_by_its_file_or_id(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(9):
        (folder / f"capture_{i}.txt").write_text("bad" if i in (2, 7) else "x" * i)
    store = tmp_path / "files.zarr"
    result = db.run(text_length, db.Files(str(folder / "*.txt")), store, chunk_size=4, **RUN)
    for status in (result, db.status(store)):
        assert [e["input"] for e in status.errors] == [
            {"path": str(folder / "capture_2.txt")},
            {"path": str(folder / "capture_7.txt")},
        ]
        lines = str(status).splitlines()
        at = lines.index(f"errors (first ones): files in {folder}")
        assert lines[at + 1 : at + 3] == [
            "  capture_2.txt (sample 2): ValueError: unreadable contents",
            "  capture_7.txt (sample 7): ValueError: unreadable contents",
        ]
        assert "capture_7.txt (sample 7)" in status._repr_html_()

    # a Parquet table: named by its id column, never by the sequence the store does not keep
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    seqs = ["ACGT" * 50, "ACNT" * 50, "GGCC" * 50, "NNNN" * 50]
    pq.write_table(pa.table({"seq_id": [f"chr{i}" for i in range(4)], "seq": seqs}), tmp_path / "s.parquet")
    store = tmp_path / "seqs.zarr"
    db.run(gc_share, db.Table(str(tmp_path / "s.parquet")), store, chunk_size=2, **RUN)
    status = db.status(store)
    assert "seq" not in db.open(store).variables
    assert [e["input"] for e in status.errors] == [{"seq_id": "chr1"}, {"seq_id": "chr3"}]
    assert "  chr1 (sample 1): ValueError: ambiguous base" in str(status).splitlines()
    assert "ACNT" not in str(status)

    # a design has no input that names a sample: its index
    store = tmp_path / "mc.zarr"
    db.run(always, db.MonteCarlo({"i": db.Uniform(0, 1)}, n=3, seed=1), store, **RUN)
    assert all("input" not in e for e in db.status(store).errors)
    assert "  sample 0: ValueError: sample value" in str(db.status(store))


@db.kernel(outputs={"y": db.Output()})
def refuses_negative(x):
    if x < 0:
        raise ValueError("negative")
    return float(x)


def test_failures_read_the_inputs_of_a_folder_that_had_files_added_since(tmp_path):
    """Rows added to the input (the rerun that grows the store not yet made): the stored
    rows are read as they were; a stored row changed: left out, and said so."""
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(2):
        pd.DataFrame({"x": np.arange(4.0) + 4 * i - 2}).to_parquet(folder / f"p{i}.parquet")
    store = tmp_path / "s.zarr"
    db.run(refuses_negative, db.Table(str(folder)), store, **RUN)
    pd.DataFrame({"x": [9.0, 10.0]}).to_parquet(folder / "p2.parquet")
    df = db.failures(store)
    assert df["x"].tolist() == [-2.0, -1.0] and "note" not in df.attrs
    pd.DataFrame({"x": [-9.0, 10.0, 0.0, 1.0]}).to_parquet(folder / "p0.parquet")
    df = db.failures(store)
    assert "x" not in df.columns and "changed since the run started" in df.attrs["note"]
    # the command's CSV says so too, on standard error (its standard output stays CSV)
    r = run_cli("failures", str(store), "--csv")
    assert r.returncode == 0 and "note: " in r.stderr and "changed since the run started" in r.stderr
    assert pd.read_csv(io.StringIO(r.stdout)).columns[0] == "sample"


def test_a_file_name_with_a_line_break_is_shown_escaped_on_one_line(tmp_path):
    """As a raw newline it broke the status's one line per failure; as a space it read as
    another file's name."""
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "new\nline.bin").write_bytes(b"c")
    (folder / "ok.bin").write_bytes(b"a")
    res = db.run(
        fails_on_c, db.Files(str(folder / "*.bin")), tmp_path / "s.zarr", cluster="threads", progress=False
    )
    assert "  new\\nline.bin (sample 0): ValueError: bad" in str(res).splitlines()
    r = run_cli("failures", str(tmp_path / "s.zarr"))
    assert r.returncode == 0 and any(
        line.split()[:2] == ["0", "new\\nline.bin"] for line in r.stdout.splitlines()
    )


@db.kernel(outputs={"n": db.Output(dtype="int64")})
def fails_on_c(path):
    from pathlib import Path

    if Path(path).read_bytes() == b"c":
        raise ValueError("bad")
    return 1


@db.kernel(
    outputs={
        "y": db.Output(),
        "peaks": db.Output(dims=("peak",), shape=(None,)),
        "tag": db.Output(dtype="str"),
    }
)
def mixed(x):
    if x < 0.3:
        raise ValueError(f"low {x:.3f}")
    n = int(x * 10)
    return {"y": 2 * x, "peaks": np.arange(n) + x, "tag": "t" * n}


def test_reading_several_blocks_at_a_time_exports_and_lists_the_same(tmp_path, monkeypatch):
    """A store of many small blocks is read several blocks at a time (each Zarr read is a
    round trip: 2,000 blocks exported in 11.8 s, now 4.3 s): the same rows."""
    from daskbatch.failures import StoreReader

    store = tmp_path / "m.zarr"
    db.run(
        mixed,
        db.MonteCarlo({"x": db.Uniform(0, 1)}, n=300, seed=2),
        store,
        cluster="threads",
        chunk_size=7,
        progress=False,
    )
    for curves in ("wide", "long"):
        db.export(store, tmp_path / f"ahead-{curves}.csv", curves=curves)
    ahead = db.failures(store)
    monkeypatch.setattr(StoreReader, "read_ahead", lambda self, rows, most_bytes=0: None)
    for curves in ("wide", "long"):
        db.export(store, tmp_path / f"plain-{curves}.csv", curves=curves)
        assert (tmp_path / f"ahead-{curves}.csv").read_bytes() == (
            tmp_path / f"plain-{curves}.csv"
        ).read_bytes()
    plain = db.failures(store)
    assert len(ahead) > 50 and ahead.equals(plain)


def test_no_store_reader_outlives_its_export_or_failures(picky_store, tmp_path):
    """A cache on a method kept every reader (its windows, dataset, zarr group) alive."""
    import gc

    from daskbatch.failures import StoreReader

    for i in range(3):
        db.failures(picky_store)
        db.export(picky_store, tmp_path / f"e{i}.csv")
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, StoreReader)]


TYPO = """\
import daskbatch as db


@db.kernel(outputs={"y": db.Output()})
def k(a):
    if a < 0:  # never here: a NameError on some samples only is theirs
        return omga
    return OMGA * a


@db.kernel(outputs={"y": db.Output()})
def bad_inputs(a):
    raise ValueError(f"no model for a={a}")


@db.kernel(outputs={"y": db.Output()})
def optional(method, x):
    if method == "fancy":  # an optional package, for some samples only
        import not_installed_fancy_pkg  # noqa: F401
    return 2.0 * x


@db.kernel(outputs={"y": db.Output()})
def branchy(x):
    if x > 0:
        y = 2.0 * x
    return y  # UnboundLocalError for x <= 0: those samples' failure
"""


def test_a_kernel_whose_code_fails_on_every_sample_is_refused_before_anything_starts(tmp_path, cli):
    """A misspelled name: plan printed a time per sample, and run (or a submitted job,
    its worker jobs waiting) computed every sample to record the same NameError. The
    probe's samples all failing with it is one line, exit 2, nothing written."""
    (tmp_path / "typo.py").write_text(TYPO)
    spec = tmp_path / "s.toml"
    text = (
        'kernel = "typo.py:k"\nstore = "t.zarr"\ncluster = "serial"\n[space]\ntype = "montecarlo"\n'
        'n = 40\nseed = 1\n[space.params.a]\ndist = "uniform"\nlow = 0\nhigh = 1\n'
    )
    spec.write_text(text)
    for command in ("plan", "run"):
        r = cli(command, str(spec), *(["--no-progress"] if command == "run" else []))
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert "kernel 'typo:k' raised NameError: name 'OMGA' is not defined at " in r.stderr
        assert "on every one of its first 16 samples: a fault of its code" in r.stderr
    assert not (tmp_path / "t.zarr").exists()
    # an error of a sample's inputs is that sample's failure, on every sample too
    spec.write_text(text.replace("typo.py:k", "typo.py:bad_inputs"))
    r = cli("run", str(spec), "--no-progress")
    assert r.returncode == 1 and "40 total: 0 ok, 40 failed" in r.stdout, r.stdout + r.stderr
    # a code error that depends on the inputs: the probe's samples shared a grid's outer
    # axis value (fancy), or took one branch only; the other samples are fine
    sys.path.insert(0, str(tmp_path))
    try:
        import typo
    finally:
        sys.path.remove(str(tmp_path))
    grid = db.Grid(method=["fancy", "basic"], x=np.linspace(0, 1, 20))
    res = db.run(typo.optional, grid, tmp_path / "o.zarr", cluster="serial", progress=False)
    assert res.samples["ok"] == 20 and res.samples["failed"] == 20
    res = db.run(
        typo.branchy, db.Grid(x=np.linspace(-1, 1, 40)), tmp_path / "b.zarr", cluster="serial", progress=False
    )
    assert res.samples["ok"] == 20 and res.samples["failed"] == 20
