import numpy as np
import pytest

import daskbatch as db
from daskbatch.errors import KernelSignatureError, OutputSpecError
from daskbatch.kernel import FAILED, OK
from daskbatch.testing import affine, curve, fail_on_multiples, vector_affine, wrong_shape


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
