import numpy as np
import pytest

import daskbatch as db
from daskbatch.errors import KernelSignatureError, OutputSpecError
from daskbatch.kernel import FAILED, OK
from daskbatch.testing import affine, curve, fail_on_multiples, hang_on, vector_affine, wrong_shape


def test_output_defaults_and_checks():
    assert np.isnan(db.Output().fill)
    assert db.Output(dtype="int32").fill == np.iinfo(np.int32).min
    assert db.Output(dtype="uint8").fill == 255
    assert db.Output(dtype=bool).fill is False
    with pytest.raises(OutputSpecError, match="same length"):
        db.Output(dims=("t",), shape=())
    with pytest.raises(OutputSpecError, match="positive integers"):
        db.Output(dims=("t",), shape=(0,))
    with pytest.raises(OutputSpecError, match="not a numpy dtype"):
        db.Output(dtype="nope")
    with pytest.raises(OutputSpecError, match=r"coords\['t'\] has shape \(2,\), expected \(3,\)"):
        db.Output(dims=("t",), shape=(3,), coords={"t": [1, 2]})


def test_decorator_checks():
    with pytest.raises(KernelSignatureError, match="must name each output"):
        db.kernel(lambda x: x, outputs=db.Output())
    with pytest.raises(KernelSignatureError, match="takes 'state' but has no setup"):
        db.kernel(lambda x, state: x, outputs={"y": db.Output()})
    with pytest.raises(KernelSignatureError, match="positional-only"):
        db.kernel(lambda x, /: x, outputs={"y": db.Output()})


def test_check_arguments_names_the_mismatch():
    with pytest.raises(KernelSignatureError, match=r"has no argument\(s\) \['c'\]"):
        affine.check_arguments({"a": 1, "c": 2}, {})
    with pytest.raises(KernelSignatureError, match=r"needs argument\(s\) \['a'\]"):
        affine.check_arguments({"b": 1}, {})
    with pytest.raises(KernelSignatureError, match="have the names of parameters"):
        affine.check_arguments({"a": 1}, {"a": 2})
    affine.check_arguments({"a": 1}, {"scale": 2.0})


def test_per_sample_block_isolates_failures():
    i = np.arange(20)
    res = fail_on_multiples.run_block({"i": i}, (20,), label=lambda p: f"sample {p[0]}")
    assert res.n_errors == 2
    assert (res.status == FAILED).sum() == 2 and res.status[7] == FAILED and res.status[14] == FAILED
    assert np.isnan(res.outputs["y"][7]) and res.outputs["y"][8] == 8.0
    assert res.errors[0]["sample"] == "sample 7" and "boom at i=7" in res.errors[0]["error"]
    assert "fail_on_multiples" in res.errors[0]["where"]


def test_vectorised_kernel_falls_back_to_one_sample_at_a_time():
    a = np.array([1.0, -1.0, 2.0])
    res = vector_affine.run_block({"a": a}, (3,), {"scale": 2.0})
    assert res.status.tolist() == [OK, FAILED, OK]
    assert res.outputs["y"][0] == 2.0 and res.outputs["y"][2] == 4.0 and np.isnan(res.outputs["y"][1])
    ok = vector_affine.run_block({"a": np.arange(4.0)}, (4,))
    assert (ok.status == OK).all()


def test_several_outputs_and_core_dims():
    res = curve.run_block({"x": np.arange(3.0), "w": np.ones((3, 2))}, (3,))
    assert res.outputs["curve"].shape == (3, 5) and res.outputs["npos"].tolist() == [2, 2, 2]


def test_wrong_shape_names_sample_output_expected_and_actual():
    with pytest.raises(OutputSpecError, match=r"output 'y' has shape \(4,\), expected \(3,\)"):
        wrong_shape.probe({"x": np.array([0.9])}, (1,))
    res = wrong_shape.run_block({"x": np.array([0.1, 0.9])}, (2,), label=lambda p: f"sample {p[0]}")
    assert res.status.tolist() == [OK, FAILED]
    assert "sample 1: output 'y' has shape (4,), expected (3,)" in res.errors[0]["error"]


def test_wrong_dtype_is_an_error():
    @db.kernel(outputs={"n": db.Output(dtype="int64")})
    def halves(x):
        return x / 2

    with pytest.raises(OutputSpecError, match="dtype float64, expected int64"):
        halves.probe({"x": np.array([3])}, (1,))


def test_missing_and_extra_output_names():
    @db.kernel(outputs={"a": db.Output(), "b": db.Output()})
    def two(x):
        return {"a": x, "c": x}

    with pytest.raises(OutputSpecError, match=r"returned outputs \['a', 'c'\], expected \['a', 'b'\]"):
        two.probe({"x": np.array([1.0])}, (1,))


def test_setup_runs_once_per_process_and_state_is_passed():
    calls = []

    def setup():
        calls.append(1)
        return {"offset": 100.0}

    @db.kernel(outputs={"y": db.Output()}, setup=setup)
    def with_state(x, state):
        return x + state["offset"]

    r1 = with_state.run_block({"x": np.arange(3.0)}, (3,))
    r2 = with_state.run_block({"x": np.arange(3.0)}, (3,))
    assert r1.outputs["y"].tolist() == [100.0, 101.0, 102.0]
    assert (r2.status == db.STATUS["ok"]).all() and r2.outputs["y"].tolist() == [100.0, 101.0, 102.0]
    assert len(calls) == 1


def test_kernel_is_still_callable_and_picklable():
    import pickle

    assert affine(2.0, b=1.0) == 3.0
    assert pickle.loads(pickle.dumps(affine)) is affine
    assert "per sample" in repr(affine)


# --------------------------------------------------------------------------- STATUS


def test_status_is_an_int_enum_with_the_stored_codes():
    from enum import IntEnum

    assert issubclass(db.STATUS, IntEnum) and len(db.STATUS) == 5
    assert [(m.name, int(m)) for m in db.STATUS] == [
        ("pending", 0),
        ("ok", 1),
        ("failed", 2),
        ("timeout", 3),
        ("crashed", 4),
    ]
    assert db.STATUS["ok"] is db.STATUS.ok is db.STATUS(1) and db.STATUS.ok == 1
    assert db.STATUS.items() == [(m.name, m) for m in db.STATUS]
    codes = np.array([db.STATUS.crashed, db.STATUS.ok], dtype=np.int8)  # still int8 arrays
    assert codes.tolist() == [4, 1] and (codes == db.STATUS.crashed).tolist() == [True, False]
    assert np.bincount(codes, minlength=len(db.STATUS))[db.STATUS.crashed] == 1


# --------------------------------------------------------------------------- labels and error records


def test_sample_label_monte_carlo_table_and_grid():
    from daskbatch.errors import sample_coords, sample_label

    mc = db.MonteCarlo({"x": db.Uniform(0, 1)}, n=1000, seed=1)
    assert sample_label(mc, 222) == "sample 222" and sample_coords(mc, 222) == {}
    assert sample_label(db.Table({"x": np.arange(5.0)}), 3) == "sample 3"
    grid = db.Grid(rho1=[1.0, 10.0], rho2=[10.0, 50.0, 100.0])
    assert sample_label(grid, 5) == "rho1=10, rho2=100 (sample 5)"
    assert sample_coords(grid, 5) == {"rho1": 10.0, "rho2": 100.0}
    odd = db.Grid(k=["sand", "clay"], t=[0.1, 2.5e-7])
    assert sample_label(odd, 3) == "k='clay', t=2.5e-07 (sample 3)"
    product = db.Product(db.Grid(c=[1, 2, 3]), db.MonteCarlo({"z": db.Normal(0, 1)}, n=4, seed=2))
    assert sample_label(product, 9) == "c=3, realisation=1 (sample 9)"


def test_run_block_records_the_flat_index_and_grid_values_of_a_failing_sample():
    from daskbatch.errors import ErrorRecord

    grid = db.Grid(i=np.arange(10), k=[5, 7])  # sample (7, 0) raises (i=7, k=7 is not 0)
    region = (slice(6, 9), slice(0, 2))  # a block of 3 x 2 samples
    values = grid.block(region)
    params = {"i": values["i"].reshape(3, 1), "k": np.array([7, 7]).reshape(1, 2)}
    res = fail_on_multiples.run_block(params, (3, 2), space=grid, region=region)
    assert res.n_errors == 2  # i = 7, both k
    rec = res.records()[0]
    assert isinstance(rec, ErrorRecord)
    assert rec.index == 14 and rec.position == (1, 0) and rec.coords == {"i": 7, "k": 5}
    assert rec.label == "i=7, k=5 (sample 14)" and res.errors[0]["sample"] == rec.label
    assert rec.status == "failed" and rec.error_type == "RuntimeError" and rec.message == "boom at i=7"
    assert rec.error == "RuntimeError: boom at i=7" == res.errors[0]["error"]
    assert "fail_on_multiples" in rec.where and 'raise RuntimeError(f"boom' in rec.traceback
    assert "run_block" not in rec.traceback  # daskbatch's own frames are trimmed
    # without a space the block is its own space
    alone = fail_on_multiples.run_block({"i": np.arange(10)}, (10,))
    assert alone.errors[0]["sample"] == "sample 7" and alone.errors[0]["index"] == 7


def test_error_records_round_trip_and_old_stored_records_stay_readable():
    from daskbatch.errors import ErrorRecord

    rec = ErrorRecord(
        index=5, coords={"a": np.float64(2.0)}, error_type="ValueError", message="bad", label="a=2 (sample 5)"
    )
    assert rec.coords == {"a": 2.0} and type(rec.coords["a"]) is float
    assert ErrorRecord.from_dict(rec.to_dict()) == rec
    old = {
        "position": [3],
        "sample": "sample 3",
        "error": "SystemExit: the kernel called sys.exit(3)",
        "where": "",
    }
    back = ErrorRecord.from_dict(old)
    assert (back.error_type, back.message, back.status, back.index) == (
        "SystemExit",
        "the kernel called sys.exit(3)",
        "failed",
        None,
    )
    assert {k: back.to_dict()[k] for k in old} == old  # what old readers use is unchanged
    crashed = ErrorRecord.from_dict({"sample": "sample 1", "error": "WorkerCrash: died", "position": [1]})
    assert crashed.status == "crashed"
    timed = ErrorRecord.from_dict(
        {"sample": "s", "error": "SampleTimeout: stopped after the timeout of 1.5 s"}
    )
    assert timed.status == "timeout" and timed.seconds == 1.5
    plain = ErrorRecord.from_dict({"sample": "sample 2", "error": "KeyboardInterrupt raised by the kernel"})
    assert plain.error == "KeyboardInterrupt raised by the kernel" and plain.error_type == ""
    with pytest.raises(ValueError, match="status='ok'"):
        ErrorRecord(index=1, status="ok")


def test_timeout_and_crash_records_keep_the_texts_users_know():
    from daskbatch.kernel import crash_record, timeout_record

    grid = db.Grid(a=[1.0, 2.0], b=[5, 6, 7])
    region = (slice(1, 2), slice(0, 3))
    t = timeout_record(grid, region, 1, 2.0, process_ended=True)
    assert t.to_dict()["error"] == (
        "SampleTimeout: stopped after the timeout of 2 s (the process running it was ended)"
    )
    assert (t.status, t.seconds, t.index, t.label) == ("timeout", 2.0, 4, "a=2, b=6 (sample 4)")
    c = crash_record(grid, region, 2)
    assert c.error.startswith("WorkerCrash: the worker process running this sample died every time")
    assert c.status == "crashed" and c.coords == {"a": 2.0, "b": 7}
    m = crash_record(grid, region, 0, memory_limit=True, rss=450 * 2**20, limit=400 * 2**20)
    assert m.error_type == "MemoryLimit" and m.error.endswith(
        "exceeding its memory limit (450 MiB of 400 MiB)"
    )


# --------------------------------------------------------------------------- the modules kernel.py is split into


def test_names_of_the_kernel_module_are_those_of_its_parts():
    import importlib

    kernel_module = importlib.import_module("daskbatch.kernel")
    parts = {
        "daskbatch.outputs": ["Output", "default_fill", "check_value", "as_dict"],
        "daskbatch.records": [
            "STATUS",
            "Status",
            "PENDING",
            "OK",
            "FAILED",
            "TIMEOUT",
            "CRASHED",
            "TIMEOUT_EXIT_CODE",
            "MAX_ERRORS_PER_BLOCK",
            "BlockResult",
            "error_record",
            "timeout_record",
            "crash_record",
        ],
        "daskbatch.calls": ["SampleTimeout", "_Watchdog", "_SignalWatch", "_release_leftover_threads"],
    }
    for module, names in parts.items():
        part = importlib.import_module(module)
        for name in names:
            assert getattr(kernel_module, name) is getattr(part, name), (module, name)
    assert db.Output is kernel_module.Output and db.STATUS is kernel_module.STATUS


def test_the_parts_of_the_kernel_module_do_not_import_it():
    import ast
    from pathlib import Path

    folder = Path(db.__file__).parent
    for name in ("outputs", "records", "calls", "ragged"):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }
        allowed = {"errors", "outputs", "records", "log", "ragged", "fstools", "parsing"}
        assert imported <= allowed, (name, imported)


def test_a_kernel_that_cannot_be_imported_is_rebuilt_from_its_pickle():
    import pickle

    import cloudpickle

    @db.kernel(outputs={"y": db.Output(dims=("k",), shape=(2,), dtype="float32")}, name="local")
    def local(x):
        return np.array([x, -x])

    reducer = local.__reduce__()[0]
    assert (reducer.__module__, reducer.__name__) == ("daskbatch.kernel", "_rebuild_kernel")
    back = pickle.loads(cloudpickle.dumps(local))
    assert back is not local and back.name == "local" and back.spec() == local.spec()
    res = back.run_block({"x": np.arange(3.0)}, (3,))
    assert res.outputs["y"].dtype == np.float32 and res.outputs["y"][2].tolist() == [2.0, -2.0]
    output = db.Output(dims=("t",), shape=(3,), dtype="int16", coords={"t": [1, 2, 3]})
    assert pickle.loads(pickle.dumps(output)) == output


def test_kernel_frames_only_in_the_tracebacks_of_retried_and_isolated_samples():
    attempts = []

    @db.kernel(outputs={"y": db.Output()})
    def stubborn(i):
        attempts.append(int(i))
        if int(i) == 1:
            raise ValueError("never")
        return float(i)

    res = stubborn.run_block({"i": np.arange(3)}, (3,), retries=2)
    assert res.status.tolist() == [OK, FAILED, OK] and attempts.count(1) == 3 and attempts.count(0) == 1
    isolated = vector_affine.run_block({"a": np.array([1.0, -1.0])}, (2,), retries=1)
    assert isolated.status.tolist() == [OK, FAILED]
    for rec in (res.records()[0], isolated.records()[0]):
        first = rec.traceback.splitlines()[0]
        assert "test_kernel.py" in first or "testing.py" in first, rec.traceback
        for own in ("daskbatch/calls.py", "daskbatch/kernel.py", "one_sample", "call_one", "run_block"):
            assert own not in rec.traceback


def test_run_block_stops_a_python_loop_past_its_timeout_and_says_which_samples():
    stopped = []

    def on_timeout(positions, timeout):
        stopped.append((positions, timeout))

    res = hang_on.run_block(
        {"i": np.arange(4)},
        (4,),
        {"bad": (2,), "how": "spin"},
        positions=[1, 2, 3],
        timeout=0.3,
        on_timeout=on_timeout,
    )
    assert res.status.tolist() == [db.STATUS.pending, OK, db.STATUS.timeout, OK]
    assert stopped == [([2], 0.3)] and res.n_errors == 1
    assert res.errors[0]["error"] == "SampleTimeout: stopped after the timeout of 0.3 s"

    @db.kernel(outputs={"y": db.Output()}, per_sample=False)
    def vector_spin(i):
        if (np.asarray(i) == 2).any():
            while True:
                pass
        return 2.0 * np.asarray(i)

    block = vector_spin.run_block({"i": np.arange(3)}, (3,), timeout=0.3)
    assert block.status.tolist() == [db.STATUS.timeout] * 3 and np.isnan(block.outputs["y"]).all()
    assert block.records()[0].message == "the block call was stopped after the timeout of 0.3 s"


@db.kernel(outputs={"y": db.Output()})
def slow_double(x):
    import time

    time.sleep(0.03)
    return 2.0 * x


def test_a_time_budget_leaves_the_last_samples_pending_after_four():
    """The probe's budget (``stop_after``): no sample starts once it has passed, but
    at least four run; the others stay pending, and a quick kernel runs them all."""
    x = np.arange(16.0)
    res = slow_double.run_block({"x": x}, (16,), stop_after=0.05)
    done = res.status == OK
    assert 4 <= done.sum() <= 6 and done[: done.sum()].all()
    assert (res.status[~done] == db.STATUS.pending).all()
    assert res.outputs["y"][done].tolist() == (2 * x[done]).tolist()
    assert (affine.run_block({"a": x}, (16,), stop_after=0.05).status == OK).all()


def test_the_probe_of_slow_samples_for_worker_processes_takes_a_few(tmp_path):
    from daskbatch.cluster import ClusterSpec
    from daskbatch.probe import measure

    space = db.Grid(x=np.arange(400.0))
    keep: list = []
    seconds = measure(ClusterSpec("fork", 2), slow_double, space, {}, None, keep=keep)
    ((shape, first),) = keep
    assert shape == (16,) and 4 <= int((first.status == OK).sum()) <= 6  # 16 asked; the budget stops it
    assert 0.02 < seconds < 0.2
    keep.clear()
    measure(ClusterSpec("serial", 1), slow_double, space, {}, None, keep=keep)  # in the driver: all 16
    assert int((keep[0][1].status == OK).sum()) == 16
