"""Outputs are cast to their declared dtype only when the value survives the cast.

An integer out of its output's range, or a finite number that becomes infinite in a
smaller float dtype, is that sample's failure, with the value and the dtype in its
error; the other samples of the block keep their exact values. inf and NaN given to
a float output are values, stored as they are.
"""

from __future__ import annotations

import numpy as np
import pytest

import daskbatch as db
from daskbatch.store import Store

OK, FAILED = int(db.STATUS.ok), int(db.STATUS.failed)
N = 16
XS = np.arange(N)

OUTPUTS = {
    "y": db.Output(dtype="int8"),
    "z": db.Output(dtype="int32"),
    "w": db.Output(dtype="float32"),
}


def _values(x):
    """x % 4 == 1: 300 + x in int8; == 2: 2**40 + x in int32; == 3: 1e300 in float32;
    x == 4: +inf and x == 8: NaN in float32 (values: ok)."""
    x = np.asarray(x, dtype=np.int64)
    y = np.where(x % 4 == 1, 300 + x, x)
    z = np.where(x % 4 == 2, 2**40 + x, x)
    w = np.where(x % 4 == 3, 1e300, x.astype(float))
    w = np.where(x == 4, np.inf, np.where(x == 8, np.nan, w))
    return y, z, w


def _scalar(x):
    y, z, w = _values(x)
    return {"y": int(y), "z": int(z), "w": float(w)}  # plain Python numbers


def _vectorised(x):
    y, z, w = _values(x)
    return {"y": y, "z": z, "w": w}


EXPECTED_ERRORS = {
    1: "output 'y': value 301 does not fit in int8 (range -128..127)",
    2: "output 'z': value 1099511627778 does not fit in int32 (range -2147483648..2147483647)",
    3: "output 'w': value 1e+300 does not fit in float32 (largest finite magnitude 3.4028235e+38)",
}


@pytest.mark.parametrize("per_sample", [True, False], ids=["scalar", "vectorised"])
@pytest.mark.parametrize("cluster", ["serial", "threads"])
def test_a_value_that_does_not_fit_is_that_samples_failure(tmp_path, per_sample, cluster):
    k = db.kernel(
        _scalar if per_sample else _vectorised, outputs=OUTPUTS, per_sample=per_sample, name="casts"
    )
    store = tmp_path / "s.zarr"
    res = db.run(k, db.Table({"x": XS}), store, cluster=cluster, chunk_size=8, progress=False)
    bad = XS % 4 != 0
    assert res.samples["failed"] == int(bad.sum()) and res.samples["ok"] == int((~bad).sum())
    ds = db.open(store).load()
    assert ds.status.values.tolist() == [FAILED if b else OK for b in bad]
    good = ~bad
    assert ds.y.values[good].tolist() == XS[good].tolist()
    assert ds.z.values[good].tolist() == XS[good].tolist()
    w = ds.w.values[good]
    assert w[XS[good] == 4][0] == np.inf and np.isnan(w[XS[good] == 8][0])
    plain = (XS[good] != 4) & (XS[good] != 8)
    assert w[plain].tolist() == XS[good][plain].astype(float).tolist()
    # a failed sample keeps the fill values, never the wrapped or infinite number
    assert set(ds.y.values[bad].tolist()) == {-128}
    assert set(ds.z.values[bad].tolist()) == {np.iinfo(np.int32).min}
    assert np.isnan(ds.w.values[bad]).all()
    records = Store(store).ledger.errors([(0,), (1,)])  # every record, not the few status shows
    errors = {int(e["index"]): e for doc in records for e in doc["errors"]}
    assert sorted(errors) == np.flatnonzero(bad).tolist()
    for i, e in errors.items():
        assert e["status"] == "failed" and e["type"] == "OutputValueError"
        if i % 4 == 1:
            assert e["message"] == EXPECTED_ERRORS[1].replace("301", str(300 + i))
        elif i % 4 == 2:
            assert e["message"] == EXPECTED_ERRORS[2].replace("1099511627778", str(2**40 + i))
        else:
            assert e["message"] == EXPECTED_ERRORS[3]


def test_the_error_record_names_the_sample_value_and_dtype():
    k = db.kernel(_scalar, outputs=OUTPUTS, name="casts")
    res = k.run_block({"x": XS[:4]}, (4,))
    assert res.status.tolist() == [OK, FAILED, FAILED, FAILED]
    assert [r.message for r in res.records()] == [EXPECTED_ERRORS[i] for i in (1, 2, 3)]
    assert [r.label for r in res.records()] == ["sample 1", "sample 2", "sample 3"]
    assert res.records()[0].error == "OutputValueError: " + EXPECTED_ERRORS[1]


def test_a_vectorised_block_keeps_its_good_samples_without_calling_them_one_by_one():
    calls = []

    def core(x):
        calls.append(len(x))
        return _vectorised(x)

    k = db.kernel(core, outputs=OUTPUTS, per_sample=False, name="casts")
    res = k.run_block({"x": XS}, (N,))
    assert calls == [N]  # one block call: no sample-by-sample rerun
    assert res.status.tolist() == [FAILED if x % 4 else OK for x in XS]
    assert res.outputs["y"][XS % 4 == 0].tolist() == XS[XS % 4 == 0].tolist()
    # only some samples of a block (a block resumed after a timeout)
    res = k.run_block({"x": XS}, (N,), positions=[0, 1, 4, 7])
    assert res.status.tolist()[:8] == [OK, FAILED, 0, 0, OK, 0, 0, FAILED]
    assert res.outputs["y"][[0, 4]].tolist() == [0, 4] and res.outputs["w"][4] == np.inf
    assert [r.position for r in res.records()] == [(1,), (7,)]


def test_a_vectorised_block_that_raises_names_the_unfit_value_of_each_sample():
    """A block call that raises is run again one sample at a time; a value that does
    not fit is then that sample's failure, named the same way."""

    def core(x):
        if (x == 5).any() and len(x) > 1:
            raise RuntimeError("the whole block fails")
        return _vectorised(x)

    k = db.kernel(core, outputs=OUTPUTS, per_sample=False, name="casts")
    res = k.run_block({"x": XS[:4]}, (4,))
    assert res.status.tolist() == [OK, FAILED, FAILED, FAILED]
    res = k.run_block({"x": XS[4:8]}, (4,))
    assert res.status.tolist() == [OK, FAILED, FAILED, FAILED]
    assert res.records()[0].message == EXPECTED_ERRORS[1].replace("301", "305")


def test_every_failure_of_a_block_is_counted_and_twenty_are_kept():
    k = db.kernel(lambda x: x + 1000, outputs={"y": db.Output(dtype="int8")}, per_sample=False)
    res = k.run_block({"x": np.arange(100)}, (100,))
    assert (res.status == FAILED).all() and res.n_errors == 100 and len(res.errors) == 20
    assert res.errors[-1]["message"] == "output 'y': value 1019 does not fit in int8 (range -128..127)"


@pytest.mark.parametrize("per_sample", [True, False])
def test_signed_values_for_an_unsigned_output_are_checked_by_value(tmp_path, per_sample):
    def core(x):
        return x - 1  # -1 for x = 0: not a uint8

    k = db.kernel(core, outputs={"n": db.Output(dtype="uint8")}, per_sample=per_sample, name="minus")
    store = tmp_path / "u.zarr"
    db.run(k, db.Table({"x": np.arange(5)}), store, cluster="serial", progress=False)
    ds = db.open(store).load()
    assert ds.status.values.tolist() == [FAILED, OK, OK, OK, OK]
    assert ds.n.values[1:].tolist() == [0, 1, 2, 3]
    assert (
        db.status(store).errors[0]["message"] == "output 'n': value -1 does not fit in uint8 (range 0..255)"
    )


def test_core_dims_name_the_element_and_ints_to_float16_overflow():
    out = {"c": db.Output(dims=("t",), shape=(3,), dtype="float16")}
    k = db.kernel(lambda x: np.array([1.0, x, -x]).astype(np.float64) * 1000, outputs=out)
    res = k.run_block({"x": np.array([1, 70])}, (2,))
    assert res.status.tolist() == [OK, FAILED]
    assert res.outputs["c"][0].tolist() == [1000.0, 1000.0, -1000.0]
    assert res.records()[0].message == (
        "output 'c': value 70000.0 at index (1,) does not fit in float16 (largest finite magnitude 65504)"
    )


def test_python_ints_beyond_int64_fail_their_sample():
    k = db.kernel(lambda x: 2**70 if x == 2 else int(x), outputs={"n": db.Output(dtype="int64")})
    res = k.run_block({"x": np.arange(4)}, (4,))
    assert res.status.tolist() == [OK, OK, FAILED, OK]
    assert res.outputs["n"][[0, 1, 3]].tolist() == [0, 1, 3]
    assert "value 1180591620717411303424 does not fit in int64" in res.records()[0].message


def test_a_run_is_not_stopped_by_a_value_in_the_probe(tmp_path):
    """The probe before a run refuses a kernel whose outputs break their spec; a value
    out of range in the probed samples is only those samples' failure."""
    k = db.kernel(lambda x: x + 200, outputs={"y": db.Output(dtype="int16")}, per_sample=False)
    res = db.run(
        k, db.Table({"x": np.array([0, 40_000, 1])}), tmp_path / "p.zarr", cluster="serial", progress=False
    )
    assert res.samples["ok"] == 2 and res.samples["failed"] == 1
