"""Reductions: partial states of blocks, merged, against numpy on the same values."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskbatch.kernel import STATUS
from daskbatch.outputs import Output
from daskbatch.reductions import (
    Aggregation,
    Converged,
    Exceedance,
    Histogram,
    Quantiles,
    ReductionError,
    decode_array,
    encode_array,
    parse_reduce,
)

OK, FAILED, TIMEOUT = int(STATUS.ok), int(STATUS.failed), int(STATUS.timeout)
ALL = ["count", "sum", "mean", "var", "std", "min", "max"]


def blocks_1d(n, sizes):
    """Slices of consecutive blocks of the given sizes (the last takes the rest)."""
    starts = np.cumsum([0, *sizes])
    starts = starts[starts < n]
    return [slice(int(a), int(b)) for a, b in zip(starts, [*starts[1:], n], strict=True)]


def docs_1d(red, values, status, slices, roundtrip=True):
    docs = []
    for i, s in enumerate(slices):
        doc = red.partial({k: v[s] for k, v in values.items()}, status[s], (s,))
        docs.append(((i,), json.loads(json.dumps(doc)) if roundtrip else doc))
    return docs


def assert_close(got, want, rtol=1e-12):
    got, want = np.asarray(got, float), np.asarray(want, float)
    scale = np.maximum(np.abs(want), 1e-300)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.all(np.abs(got[ok] - want[ok]) <= rtol * scale[ok]), (got, want)


def assert_bitwise(a, b):
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name
    assert a.identical(b)


# -- every stat against numpy -----------------------------------------------------------


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    cut=st.lists(st.integers(1, 120), min_size=1, max_size=6),
    nan=st.sampled_from([0.0, 0.1]),
    failed=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_float_stats_match_numpy(seed, n, cut, nan, failed):
    rng = np.random.default_rng(seed)
    outs = {"y": Output(dims=("gate",), shape=(3,))}
    red = parse_reduce(ALL, outs, ("sample",))
    y = rng.normal(5.0, 2.0, size=(n, 3)) * rng.choice([1e-3, 1.0, 1e6])
    y[rng.random((n, 3)) < nan] = np.nan
    status = np.where(rng.random(n) < failed, FAILED, OK).astype(np.int8)
    y[status != OK] = 1e300  # garbage where a sample failed: never counted
    ds = red.to_dataset(red.merge(docs_1d(red, {"y": y}, status, blocks_1d(n, cut)), (n,)))
    ok = y[status == OK]
    with np.errstate(all="ignore"):
        counts = (~np.isnan(ok)).sum(0)
        want = {
            "count": counts,
            "sum": np.nansum(ok, 0),
            "mean": _nan_where(counts, np.nansum(ok, 0) / np.maximum(counts, 1)),
        }
        want["var"] = _nan_where(counts, np.nansum((ok - want["mean"]) ** 2, 0) / np.maximum(counts, 1))
        want["std"] = np.sqrt(want["var"])
        want["min"] = _nan_where(counts, np.where(np.isnan(ok), np.inf, ok).min(0, initial=np.inf))
        want["max"] = _nan_where(counts, np.where(np.isnan(ok), -np.inf, ok).max(0, initial=-np.inf))
    assert np.array_equal(ds["y_count"].values, want["count"])
    assert ds["y_count"].dtype == np.int64 and ds["y_sum"].dtype == np.float64
    assert_close(ds["y_sum"], want["sum"], 1e-12 * 10)
    assert_close(ds["y_mean"], want["mean"])
    # var: relative to the variance, with a floor for the cancellation in a mean's square
    scale = np.nanmax(np.abs(ok)) ** 2 if np.any(counts) else 1.0
    got_var = ds["y_var"].values
    assert np.array_equal(np.isnan(got_var), np.isnan(want["var"]))
    fin = ~np.isnan(want["var"])
    assert np.all(
        np.abs(got_var[fin] - want["var"][fin]) <= 1e-12 * np.maximum(want["var"][fin], 1e-12 * scale)
    )
    assert_close(ds["y_min"], want["min"], 0)
    assert_close(ds["y_max"], want["max"], 0)
    assert ds.attrs["n"] == int((status == OK).sum())
    assert ds.attrs["samples"] == n


def _nan_where(counts, values):
    return np.where(counts == 0, np.nan, values)


def test_moments_of_one_block_and_many_agree_within_1e_12():
    rng = np.random.default_rng(3)
    y = 1e4 + rng.normal(size=100_000)  # a large mean: the naive sum of squares would lose digits
    status = np.full(y.size, OK, np.int8)
    red = parse_reduce(["mean", "var", "std"], {"y": Output()}, ("sample",))
    many = red.to_dataset(red.merge(docs_1d(red, {"y": y}, status, blocks_1d(y.size, [977] * 200)), y.shape))
    assert abs(float(many["y_mean"]) - y.mean()) <= 1e-12 * abs(y.mean())
    assert abs(float(many["y_var"]) - y.var()) <= 1e-12 * y.var()
    assert abs(float(many["y_std"]) - y.std()) <= 1e-12 * y.std()
    assert many["y_var"].attrs["ddof"] == 0


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), cut=st.lists(st.integers(1, 50), min_size=1, max_size=5))
def test_integer_sums_are_exact(seed, cut):
    rng = np.random.default_rng(seed)
    n = 120
    outs = {"k": Output(dtype="int64"), "b": Output(dtype="bool"), "u": Output(dtype="uint8")}
    red = parse_reduce(["sum", "min", "max", "mean"], outs, ("sample",))
    k = rng.integers(-(2**52), 2**52, n)  # sums beyond float64's exact integers
    b = rng.random(n) < 0.4
    u = rng.integers(0, 256, n).astype(np.uint8)
    status = np.where(rng.random(n) < 0.2, TIMEOUT, OK).astype(np.int8)
    ds = red.to_dataset(red.merge(docs_1d(red, {"k": k, "b": b, "u": u}, status, blocks_1d(n, cut)), (n,)))
    ok = status == OK
    assert int(ds["k_sum"]) == sum(int(v) for v in k[ok])
    assert ds["k_sum"].dtype == np.int64 and ds["b_sum"].dtype == np.int64
    assert int(ds["b_sum"]) == int(b[ok].sum())
    assert int(ds["u_sum"]) == int(u[ok].astype(int).sum())
    if ok.any():
        assert int(ds["k_min"]) == k[ok].min() and int(ds["k_max"]) == k[ok].max()
        assert ds["k_min"].dtype == np.int64 and ds["u_max"].dtype == np.uint8
        assert float(ds["b_mean"]) == pytest.approx(b[ok].mean(), rel=1e-12)
    else:  # nothing counted: min and max are the output's fill
        assert int(ds["k_min"]) == np.iinfo(np.int64).min


@pytest.mark.parametrize("cut", [[3], [8]])
def test_an_integer_sum_that_leaves_the_range_is_float64_with_a_warning(cut, caplog):
    """Documented as exact: past int64 (uint64) it wrapped silently (8 x 2**62 gave 0)."""
    import logging

    n = 8
    outs = {
        "i": Output(dtype="int64"),
        "u": Output(dtype="uint64"),
        "k": Output(dtype="int64"),
        "c": Output(dtype="int64"),
    }
    red = parse_reduce(["sum"], outs, ("sample",))
    values = {
        "i": np.full(n, 2**62, np.int64),
        "u": np.full(n, 2**63, np.uint64),
        "k": np.arange(n, dtype=np.int64) - 3,  # in range: exact, int64
        "c": np.array([10**17, -(10**17)] * (n // 2), np.int64) + 125,  # large values that cancel
    }
    status = np.full(n, OK, np.int8)
    with caplog.at_level(logging.WARNING, logger="daskbatch"):
        ds = red.to_dataset(red.merge(docs_1d(red, values, status, blocks_1d(n, cut)), (n,)))
    assert ds["i_sum"].dtype == np.float64 and float(ds["i_sum"]) == float(8 * 2**62)
    assert ds["u_sum"].dtype == np.float64 and float(ds["u_sum"]) == float(8 * 2**63)
    assert ds["k_sum"].dtype == np.int64 and int(ds["k_sum"]) == 4
    assert ds["c_sum"].dtype == np.int64 and int(ds["c_sum"]) == 1000  # no wrap: exact
    assert "output 'c'" not in caplog.text
    assert "the sum of output 'i' leaves the range of int64" in caplog.text


@pytest.mark.parametrize("cut", [[1000], [250], [97, 3]])
def test_infinities_count_as_numpy_counts_them_whatever_the_blocks(cut):
    """A solver that diverged gives inf: the digest skipped them while the count kept them
    (a quantile ranked among the finite values only), and the merged mean was inf in one
    block and NaN in several (inf - inf in the merge)."""
    rng = np.random.default_rng(4)
    n = 1000
    y = rng.random(n)
    y[rng.random(n) < 0.3] = np.inf
    y[:5] = -np.inf  # and a few -inf: the mean is NaN then, as numpy's
    z = np.where(np.isinf(y), np.inf, y)  # only +inf
    outs = {"y": Output(), "z": Output()}
    red = parse_reduce(
        ["count", "sum", "mean", "var", Quantiles([0.01, 0.25, 0.5, 0.75, 0.99])], outs, ("sample",)
    )
    status = np.full(n, OK, np.int8)
    ds = red.to_dataset(red.merge(docs_1d(red, {"y": y, "z": z}, status, blocks_1d(n, cut)), (n,)))
    assert int(ds.z_count) == n and float(ds.z_mean) == np.inf and np.isnan(float(ds.z_var))
    assert np.isnan(float(ds.y_mean)) and np.isnan(float(ds.y_var))
    qs = [0.01, 0.25, 0.5, 0.75, 0.99]

    def ranked(values):  # numpy's linear rank; numpy itself gives NaN between two infs (inf - inf)
        lo, hi = np.quantile(values, qs, method="lower"), np.quantile(values, qs, method="higher")
        with np.errstate(invalid="ignore"):
            linear = np.quantile(values, qs)
        return np.where(
            np.isinf(lo) & np.isinf(hi) & (lo != hi),
            np.nan,
            np.where(np.isinf(lo), lo, np.where(np.isinf(hi), hi, linear)),
        )

    for name, values in (("y", y), ("z", z)):
        got = ds[f"{name}_quantile"].values
        want = ranked(values)
        assert np.isinf(want).any() and np.isfinite(want).any()
        assert np.array_equal(np.isinf(got), np.isinf(want)) and np.array_equal(
            got[np.isinf(got)], want[np.isinf(want)]
        )
        assert np.allclose(got[np.isfinite(got)], want[np.isfinite(want)], atol=0.01), (name, got, want)
    # without infinities nothing changes: the same bits as a store of finite values
    fin = parse_reduce(["mean", "var"], {"w": Output()}, ("sample",))
    w = rng.random(n)
    a = fin.to_dataset(fin.merge(docs_1d(fin, {"w": w}, status, blocks_1d(n, cut)), (n,)))
    assert float(a.w_mean) == pytest.approx(w.mean(), rel=1e-12) and float(a.w_var) == pytest.approx(
        w.var(), rel=1e-12
    )


def test_quantiles_within_t_digest_accuracy():
    """1e5 lognormal samples in 100 blocks: the rank of each estimated quantile is within
    0.3% of q (measured: about 0.05 to 0.1%), and within 0.05% in the tails."""
    rng = np.random.default_rng(4)
    n = 100_000
    y = rng.lognormal(size=n)
    q = np.round(np.linspace(0.001, 0.999, 999), 6)
    red = parse_reduce(Quantiles(q), {"y": Output()}, ("sample",))
    status = np.full(n, OK, np.int8)
    ds = red.to_dataset(red.merge(docs_1d(red, {"y": y}, status, blocks_1d(n, [1000] * 100)), (n,)))
    assert np.array_equal(ds["quantile"].values, q)
    est = ds["y_quantile"].values
    assert ds["y_quantile"].dims == ("quantile",)
    ys = np.sort(y)
    rank = (np.searchsorted(ys, est, "left") + np.searchsorted(ys, est, "right")) / 2 / n
    err = np.abs(rank - q)
    assert err.max() < 0.003
    tails = (q < 0.01) | (q > 0.99)
    assert err[tails].max() < 0.0005
    assert ds["y_quantile"].attrs["method"] == "t-digest"


def test_quantiles_of_few_values_keep_the_extremes():
    red = parse_reduce({"y": [Quantiles([0.01, 0.5, 0.99]), "min", "max"]}, {"y": Output()}, ("sample",))
    y = np.arange(1.0, 11.0)
    status = np.full(10, OK, np.int8)
    ds = red.to_dataset(red.merge(docs_1d(red, {"y": y}, status, blocks_1d(10, [3, 3])), (10,)))
    got = ds["y_quantile"].values
    assert 1.0 <= got[0] <= 1.5 and got[1] == pytest.approx(5.5, abs=0.5) and 9.5 <= got[2] <= 10.0


def test_histogram_and_exceedance_match_numpy():
    rng = np.random.default_rng(5)
    n = 5000
    y = rng.normal(size=(n, 2))
    y[::97] = np.inf
    y[::89] = np.nan
    edges = np.array([-2.0, -1.0, 0.0, 0.5, 2.0])
    y[:3, 0] = edges[-1]  # the last edge is in the last bin, as numpy has it
    status = np.where(rng.random(n) < 0.1, FAILED, OK).astype(np.int8)
    outs = {"y": Output(dims=("ch",), shape=(2,))}
    red = parse_reduce(
        {"y": [Histogram(edges), Exceedance(1.0), Exceedance(-0.5, above=False)]}, outs, ("sample",)
    )
    ds = red.to_dataset(red.merge(docs_1d(red, {"y": y}, status, blocks_1d(n, [700] * 8)), (n,)))
    ok = y[status == OK]
    for c in range(2):
        v = ok[:, c][~np.isnan(ok[:, c])]
        counts, _ = np.histogram(v[np.isfinite(v)], edges)
        assert ds["y_histogram"].values[c].tolist() == counts.tolist()
        assert int(ds["y_histogram_underflow"][c]) == int((v < edges[0]).sum())
        assert int(ds["y_histogram_overflow"][c]) == int((v > edges[-1]).sum())
        p = np.array([(v < -0.5).mean(), (v > 1.0).mean()])  # sorted by threshold
        assert ds["y_exceedance"].values[c] == pytest.approx(p, rel=1e-14)
        assert ds["y_exceedance_stderr"].values[c] == pytest.approx(np.sqrt(p * (1 - p) / v.size), rel=1e-12)
    assert ds["y_histogram"].dims == ("ch", "bin")
    assert ds["bin_lower"].values.tolist() == edges[:-1].tolist()
    assert ds["bin_upper"].values.tolist() == edges[1:].tolist()
    assert ds["y_exceedance"].dims == ("ch", "threshold")
    assert ds["threshold"].values.tolist() == [-0.5, 1.0]
    assert ds["threshold_above"].values.tolist() == [False, True]


def test_one_exceedance_has_no_threshold_dim():
    red = parse_reduce({"peak": Exceedance(2.0)}, {"peak": Output()}, ("sample",))
    y = np.array([1.0, 3.0, 2.0, 5.0])
    ds = red.to_dataset(red.merge([((0,), red.partial({"peak": y}, np.full(4, OK), (slice(0, 4),)))], (4,)))
    assert float(ds["peak_exceedance"]) == 0.5  # 2.0 does not exceed 2.0
    assert float(ds["peak_exceedance_stderr"]) == pytest.approx(math.sqrt(0.25 / 4))
    assert ds["peak_exceedance"].attrs["threshold"] == 2.0


def absmax_chunk(v):
    return (np.abs(v).max(axis=0), np.asarray(v.shape[0]))


def absmax_combine(a, b):
    return (np.maximum(a[0], b[0]), a[1] + b[1])


def absmax_finalize(s):
    return s[0]


ABSMAX = Aggregation("absmax", absmax_chunk, absmax_combine, absmax_finalize)


def test_aggregation_of_your_own():
    rng = np.random.default_rng(6)
    y = rng.normal(size=(400, 3))
    status = np.where(rng.random(400) < 0.2, FAILED, OK).astype(np.int8)
    y[status != OK] = 1e9
    red = parse_reduce({"y": [ABSMAX, "count"]}, {"y": Output(dims=("gate",), shape=(3,))}, ("sample",))
    ds = red.to_dataset(red.merge(docs_1d(red, {"y": y}, status, blocks_1d(400, [50] * 8)), (400,)))
    assert ds["y_absmax"].values.tolist() == np.abs(y[status == OK]).max(0).tolist()
    spec = red.spec()["outputs"]["y"]
    assert spec[0] == "count"
    assert spec[1]["chunk"] == "test_reductions.absmax_chunk" or spec[1]["chunk"].endswith(".absmax_chunk")


# -- kept dims --------------------------------------------------------------------------


def grid_docs(red, values, status, shape, block):
    docs = []
    for i in range(math.ceil(shape[0] / block[0])):
        for j in range(math.ceil(shape[1] / block[1])):
            sl = (
                slice(i * block[0], min((i + 1) * block[0], shape[0])),
                slice(j * block[1], min((j + 1) * block[1], shape[1])),
            )
            doc = red.partial({k: v[sl] for k, v in values.items()}, status[sl], sl)
            docs.append(((i, j), json.loads(json.dumps(doc))))
    return docs


@pytest.mark.parametrize("dims", ["rho2", "rho1", ["rho1", "rho2"]])
def test_kept_dims_of_a_grid(dims):
    rng = np.random.default_rng(7)
    shape = (7, 9)
    y = rng.normal(size=(*shape, 4))
    status = np.where(rng.random(shape) < 0.15, FAILED, OK).astype(np.int8)
    status[2, :] = FAILED  # a whole row failed: nothing counted there
    y[status != OK] = np.nan
    outs = {"y": Output(dims=("gate",), shape=(4,), coords={"gate": [1.0, 2.0, 3.0, 4.0]})}
    red = parse_reduce(
        {"y": ["mean", "std", "max", ABSMAX, Quantiles([0.5])]}, outs, ("rho1", "rho2"), dims=dims
    )
    axis = {"rho2": 1, "rho1": 0}.get(dims, (0, 1)) if isinstance(dims, str) else (0, 1)
    kept = [d for d in ("rho1", "rho2") if d not in ([dims] if isinstance(dims, str) else dims)]
    assert red.kept_dims == tuple(kept)
    merged = red.merge(grid_docs(red, {"y": y}, status, shape, (3, 4)), shape)
    coords = {"rho1": np.linspace(0, 1, 7), "rho2": np.arange(9) * 10.0, "unused": [1]}
    ds = red.to_dataset(merged, coords)
    assert ds["y_mean"].dims == (*kept, "gate")
    with warnings.catch_warnings():  # all-NaN slices (the failed row)
        warnings.simplefilter("ignore", RuntimeWarning)
        want_mean = np.nanmean(y, axis=axis)
        want_std = np.nanstd(y, axis=axis)
        want_max = np.nanmax(y, axis=axis)
        want_absmax = np.nanmax(np.abs(y), axis=axis)
    assert_close(ds["y_mean"], want_mean)
    assert_close(ds["y_std"], want_std, 1e-11)
    assert_close(ds["y_max"], want_max, 0)
    assert_close(ds["y_absmax"], want_absmax, 0)
    assert ds["gate"].values.tolist() == [1.0, 2.0, 3.0, 4.0]
    for d in kept:
        assert ds[d].values.tolist() == coords[d].tolist()
    assert ds["y_quantile"].dims == ("quantile", *kept, "gate")
    assert merged.n == int((status == OK).sum()) and merged.blocks == 9
    if kept == ["rho1"]:
        assert np.isnan(ds["y_mean"].values[2]).all() and (ds["y_count"].values[2] == 0).all()
        assert np.isnan(ds["y_absmax"].values[2]).all()


# -- merge order, splits, JSON ------------------------------------------------------------


def _full_reductions():
    outs = {"y": Output(dims=("gate",), shape=(5,)), "k": Output(dtype="int32"), "s": Output(dtype="str")}
    stats = {
        "y": [*ALL, Quantiles([0.1, 0.5, 0.9]), Histogram(np.linspace(-3, 3, 7)), Exceedance(1.0), ABSMAX],
        "k": ["sum", "mean", "min"],
        "s": "count",
    }
    return parse_reduce(stats, outs, ("sample",))


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 4))
def test_any_order_and_any_rounds_give_bitwise_identical_datasets(seed, rounds):
    rng = np.random.default_rng(seed)
    red = _full_reductions()
    n = 3000
    values = {"y": rng.normal(size=(n, 5)), "k": rng.integers(-100, 100, n).astype(np.int32)}
    status = np.where(rng.random(n) < 0.1, FAILED, OK).astype(np.int8)
    docs = docs_1d(red, values, status, blocks_1d(n, [250] * 12))
    reference = red.to_dataset(red.merge(docs, (n,)))
    shuffled = list(docs)
    random.Random(seed).shuffle(shuffled)
    # arriving in rounds: each round merges everything committed so far
    cuts = sorted(random.Random(seed + 1).sample(range(1, len(docs)), rounds - 1))
    seen = []
    for part in np.split(np.arange(len(docs)), cuts):
        seen += [shuffled[i] for i in part]
        merged = red.merge(iter(seen), (n,))
    assert merged.blocks == len(docs)
    assert_bitwise(red.to_dataset(merged), reference)


def test_docs_without_json_roundtrip_merge_the_same():
    rng = np.random.default_rng(8)
    red = _full_reductions()
    n = 600
    values = {"y": rng.normal(size=(n, 5)), "k": rng.integers(-100, 100, n).astype(np.int32)}
    status = np.full(n, OK, np.int8)
    raw = docs_1d(red, values, status, blocks_1d(n, [100] * 6), roundtrip=False)
    back = [(k, json.loads(json.dumps(d))) for k, d in raw]
    assert_bitwise(red.to_dataset(red.merge(raw, (n,))), red.to_dataset(red.merge(back, (n,))))


def test_other_block_sizes_agree_closely():
    rng = np.random.default_rng(9)
    red = parse_reduce(["mean", "std", "sum"], {"y": Output()}, ("sample",))
    y = rng.normal(size=10_000)
    status = np.full(y.size, OK, np.int8)
    a = red.to_dataset(red.merge(docs_1d(red, {"y": y}, status, blocks_1d(y.size, [100] * 100)), y.shape))
    b = red.to_dataset(red.merge(docs_1d(red, {"y": y}, status, blocks_1d(y.size, [3333] * 4)), y.shape))
    for v in ("y_mean", "y_std", "y_sum"):
        assert float(a[v]) == pytest.approx(float(b[v]), rel=1e-12, abs=1e-15)


def test_doc_is_small():
    """A block of 10^4 samples of a 20-gate output, with mean, std and 3 quantiles."""
    rng = np.random.default_rng(10)
    red = parse_reduce(
        ["mean", "std", Quantiles([0.05, 0.5, 0.95])], {"r": Output(dims=("gate",), shape=(20,))}, ("sample",)
    )
    doc = red.partial({"r": rng.lognormal(size=(10_000, 20))}, np.full(10_000, OK), (slice(0, 10_000),))
    size = len(json.dumps(doc))
    assert size < 100_000  # measured: about 64 KB (12 bytes a centroid, ~256 centroids a gate)


def test_encode_array_roundtrip():
    for a in [
        np.arange(1000.0),
        np.zeros((0, 3)),
        np.array(7, np.int32),
        np.array([True, False]),
        np.arange(6).reshape(2, 3).astype(">i4"),
    ]:
        doc = json.loads(json.dumps(encode_array(a)))
        back = decode_array(doc)
        assert back.shape == a.shape and back.tolist() == a.tolist()
    big = encode_array(np.zeros(10_000))
    assert big.get("zlib") and len(big["data"]) < 1000
    compact = encode_array(np.array([0, 5, 300], np.int64), compact=True)
    assert compact["dtype"] == "<u2" and decode_array(compact).dtype == np.int64


def test_merge_refuses_docs_of_other_reductions_and_twice_the_same_block():
    a = parse_reduce("mean", {"y": Output()}, ("sample",))
    b = parse_reduce("sum", {"y": Output()}, ("sample",))
    doc = b.partial({"y": np.ones(3)}, np.full(3, OK), (slice(0, 3),))
    with pytest.raises(ReductionError, match=r"block \(0,\) was made by other reductions"):
        a.merge([((0,), doc)], (3,))
    doc = a.partial({"y": np.ones(3)}, np.full(3, OK), (slice(0, 3),))
    with pytest.raises(ReductionError, match=r"block \(0,\) is given twice"):
        a.merge([((0,), doc), ((0,), doc)], (3,))


def test_nothing_merged_yet():
    red = parse_reduce({"y": ["mean", "min", Quantiles([0.5])]}, {"y": Output()}, ("sample",))
    merged = red.merge([], (10,))
    ds = red.to_dataset(merged)
    assert merged.n == 0 and int(ds["y_count"]) == 0
    assert np.isnan(ds["y_mean"]) and np.isnan(ds["y_min"]) and np.isnan(ds["y_quantile"]).all()


# -- failed samples, text and ragged outputs ------------------------------------------------


def test_only_ok_samples_count():
    red = parse_reduce(
        {"y": ["count", "mean", "max"], "label": "count", "peaks": "count"},
        {
            "y": Output(units="m"),
            "label": Output(dtype="str"),
            "peaks": Output(dims=("peak",), shape=(None,)),
        },
        ("sample",),
    )
    y = np.array([1.0, 1e9, 3.0, -1e9, np.nan])
    status = np.array([OK, FAILED, OK, TIMEOUT, OK], np.int8)
    merged = red.merge([((0,), red.partial({"y": y}, status, (slice(0, 5),)))], (5,))
    ds = red.to_dataset(merged)
    assert float(ds["y_mean"]) == 2.0 and float(ds["y_max"]) == 3.0
    assert int(ds["y_count"]) == 2  # the NaN of an ok sample is skipped
    assert int(ds["label_count"]) == 3 and int(ds["peaks_count"]) == 3
    assert merged.n == 3 and merged.not_ok == 2
    assert "status is ok only" in ds.attrs["counted"]
    assert ds["y_mean"].attrs["units"] == "m" and ds["y_count"].attrs.get("units") is None


# -- convergence --------------------------------------------------------------------------


def test_converged_mean_of_a_normal_sample():
    rng = np.random.default_rng(11)
    y = rng.normal(10.0, 2.0, size=(20_000, 2))
    status = np.full(20_000, OK, np.int8)
    outs = {"y": Output(dims=("ch",), shape=(2,))}
    crit = Converged("y", rtol=0.005, min_n=1000)
    red = parse_reduce(None, outs, ("sample",), until=crit)
    assert red.stats("y") == ("mean",)
    est = crit.check(red, red.merge(docs_1d(red, {"y": y}, status, blocks_1d(20_000, [4000] * 5)), (20_000,)))
    z = 1.959963984540054
    assert est.value == pytest.approx(y.mean(0), rel=1e-12)
    assert est.error == pytest.approx(z * y.std(0, ddof=1) / math.sqrt(20_000), rel=1e-9)
    assert est.n == 20_000 and est.met and est.ratio < 1 and not est.exhausted
    # a tolerance too tight for the sample
    tight = Converged("y", rtol=1e-4)
    assert not tight.check(red, red.merge(docs_1d(red, {"y": y}, status, [slice(0, 20_000)]), (20_000,))).met
    # too few values yet
    few = Converged("y", rtol=0.5, min_n=1000, max_n=1000)
    est = few.check(red, red.merge(docs_1d(red, {"y": y[:500]}, status[:500], [slice(0, 500)]), (20_000,)))
    assert est.ratio < 1 and not est.met and not est.exhausted and not est.done
    est = few.check(red, red.merge(docs_1d(red, {"y": y[:1000]}, status[:1000], [slice(0, 1000)]), (20_000,)))
    assert est.met and est.exhausted and est.done
    # a few samples that diverged: the mean is infinite, never met (it was met on the finite ones)
    y[::50, 0] = np.inf
    est = crit.check(red, red.merge(docs_1d(red, {"y": y}, status, blocks_1d(20_000, [4000] * 5)), (20_000,)))
    assert not est.met and np.isinf(est.value[0]) and est.value[1] == pytest.approx(y[:, 1].mean(), rel=1e-12)


def test_converged_exceedance_and_quantile():
    rng = np.random.default_rng(12)
    n = 50_000
    y = rng.normal(size=n)
    status = np.full(n, OK, np.int8)
    ex = Converged("y", stat="exceedance", threshold=1.0, rtol=0.05, confidence=0.9)
    qc = Converged("y", stat="quantile", q=0.9, atol=0.05)
    red = parse_reduce({"y": "mean"}, {"y": Output()}, ("sample",), until=ex)
    assert red.stats("y") == ("mean", Exceedance(1.0))
    merged = red.merge(docs_1d(red, {"y": y}, status, blocks_1d(n, [10_000] * 5)), (n,))
    est = ex.check(red, merged)
    p = (y > 1.0).mean()
    z = 1.6448536269514722
    assert est.value == pytest.approx(p, rel=1e-14)
    assert est.error == pytest.approx(z * math.sqrt(p * (1 - p) / n), rel=1e-12)
    assert est.error / est.value == pytest.approx(z * math.sqrt((1 - p) / (n * p)), rel=1e-12)
    assert est.met == (est.error / est.value <= 0.05)

    red = parse_reduce(None, {"y": Output()}, ("sample",), until=qc)
    est = qc.check(red, red.merge(docs_1d(red, {"y": y}, status, blocks_1d(n, [10_000] * 5)), (n,)))
    assert est.value == pytest.approx(np.quantile(y, 0.9), abs=0.01)
    # the order-statistic interval of the 0.9 quantile, mapped through the data
    d = 1.959963984540054 * math.sqrt(0.09 / n)
    want = (np.quantile(y, 0.9 + d) - np.quantile(y, 0.9 - d)) / 2
    assert est.error == pytest.approx(want, rel=0.1)
    assert est.met

    # never an exceedance seen: the Wilson half-width, not zero; rtol cannot be met
    none = Converged("y", stat="exceedance", threshold=100.0, rtol=0.5, atol=None)
    red = parse_reduce(None, {"y": Output()}, ("sample",), until=none)
    est = none.check(red, red.merge(docs_1d(red, {"y": y}, status, [slice(0, n)]), (n,)))
    assert est.value == 0 and est.error > 0 and not est.met


# -- validation ---------------------------------------------------------------------------

OUTS = {
    "y": Output(dims=("gate",), shape=(3,)),
    "label": Output(dtype="str"),
    "peaks": Output(dims=("peak",), shape=(None,)),
    "z": Output(dtype="complex128"),
}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"reduce": {"nope": "mean"}},
            r"reduce: 'nope' is not an output; the outputs are \['label', 'peaks', 'y', 'z'\]",
        ),
        (
            {"reduce": {"y": "median"}},
            r"reduce: unknown statistic 'median' for output 'y'; use one of 'count'.*Quantiles\(\[0.5\]\)",
        ),
        ({"reduce": {"y": np.mean}}, r"reduce: <function mean.* is not a statistic.*wrap it in Aggregation"),
        (
            {"reduce": {"label": "mean"}},
            r"reduce: mean of output 'label' is not supported: it is a text output.*only 'count'",
        ),
        (
            {"reduce": {"peaks": Quantiles([0.5])}},
            r"reduce: quantile\[0.5\] of output 'peaks' is not supported: it is ragged",
        ),
        ({"reduce": {"z": "mean"}}, r"reduce: mean of output 'z' is not supported: it is complex"),
        (
            {"reduce": "mean"},
            r"reduce='mean' applies to every output, but output 'label' is text.*reduce=\{'y': 'mean'\}",
        ),
        (
            {"reduce": {"y": "mean"}, "dims": "time"},
            r"dims: 'time' is not a batch dim; use one or more of \['rho1', 'rho2'\]",
        ),
        ({"reduce": {"y": "mean"}, "dims": ["rho1", "rho1"]}, r"dims=\['rho1', 'rho1'\] names a dim twice"),
        ({"reduce": {"y": "mean"}, "dims": []}, r"dims=\[\] must name one or more batch dims"),
        ({"reduce": None, "dims": "rho1"}, r"dims='rho1' is given without reduce="),
        ({"reduce": None, "until": "mean"}, r"until='mean' is not a Converged"),
        (
            {"reduce": None, "until": Converged("nope", rtol=0.1)},
            r"until: Converged output 'nope' is not an output",
        ),
        (
            {"reduce": None, "until": Converged("label", rtol=0.1)},
            r"until: mean of output 'label' is not supported",
        ),
        (
            {"reduce": {"y": [Quantiles([0.5]), Quantiles([0.9], compression=100)]}},
            r"output 'y' has Quantiles of compressions \[100.0, 200.0\]",
        ),
        (
            {"reduce": {"y": [Histogram([0, 1]), Histogram([0, 2])]}},
            r"output 'y' has 2 Histograms; give it one",
        ),
    ],
)
def test_parse_reduce_errors_name_argument_and_value(kwargs, match):
    with pytest.raises(ReductionError, match=match) as info:
        parse_reduce(outputs=OUTS, batch_dims=("rho1", "rho2"), **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Quantiles([0.5, 1.0]), r"Quantiles: q=1.0 is not a probability strictly between 0 and 1"),
        (lambda: Quantiles([-0.1]), r"Quantiles: q=-0.1 is not"),
        (lambda: Quantiles([]), r"Quantiles: q=\[\] is empty"),
        (lambda: Quantiles("median"), r"Quantiles: q='median' is not a list of probabilities"),
        (
            lambda: Quantiles([0.5], compression=5),
            r"Quantiles: compression=5 must be a number from 20 to 1000",
        ),
        (lambda: Histogram([0, 2, 1]), r"Histogram: bins=\[0, 2, 1\] must be strictly increasing"),
        (lambda: Histogram([1]), r"Histogram: bins=\[1\] must be a list of at least two bin edges"),
        (lambda: Histogram([0, np.inf]), r"Histogram: bins=\[0, inf\] must be finite"),
        (lambda: Exceedance(float("nan")), r"Exceedance: threshold=nan must be a finite number"),
        (lambda: Exceedance(1.0, above="yes"), r"Exceedance: above='yes' must be True"),
        (
            lambda: Aggregation("mean", len, len, len),
            r"Aggregation: name='mean' is the name of a builtin statistic",
        ),
        (lambda: Aggregation("a b", len, len, len), r"Aggregation: name='a b' must be an identifier"),
        (lambda: Aggregation("a", len, 3, len), r"Aggregation\('a'\): combine=3 is not callable"),
        (lambda: Converged("y"), r"Converged: rtol=None and atol=None; give a tolerance"),
        (lambda: Converged("y", stat="median", rtol=0.1), r"Converged: stat='median' is not supported"),
        (lambda: Converged("y", stat="quantile", rtol=0.1), r"Converged: q=None must be a probability"),
        (lambda: Converged("y", q=0.5, rtol=0.1), r"Converged: q=0.5 is only for stat='quantile'"),
        (
            lambda: Converged("y", stat="exceedance", rtol=0.1),
            r"Converged: threshold=None must be a finite number",
        ),
        (lambda: Converged("y", rtol=-1), r"Converged: rtol=-1 must be a finite number >= 0"),
        (lambda: Converged("y", rtol=0.1, min_n=0), r"Converged: min_n=0 must be an integer >= 1"),
        (lambda: Converged("y", rtol=0.1, max_n=10), r"Converged: max_n=10 must be an integer >= min_n=1000"),
        (
            lambda: Converged("y", rtol=0.1, confidence=95),
            r"Converged: confidence=95 must be strictly between 0 and 1",
        ),
    ],
)
def test_stat_errors_name_argument_and_value(make, match):
    with pytest.raises(ReductionError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_partial_and_to_dataset_errors():
    red = parse_reduce({"y": "mean"}, OUTS, ("rho1", "rho2"), dims="rho2")
    status = np.full((2, 3), OK)
    with pytest.raises(
        ReductionError, match=r"partial: outputs\['y'\] has shape \(2, 3\), expected \(2, 3, 3\)"
    ):
        red.partial({"y": np.zeros((2, 3))}, status, (slice(0, 2), slice(0, 3)))
    with pytest.raises(ReductionError, match=r"partial: outputs has no 'y'"):
        red.partial({}, status, (slice(0, 2), slice(0, 3)))
    with pytest.raises(ReductionError, match=r"partial: slices=.* do not match the block's shape \(2, 3\)"):
        red.partial({"y": np.zeros((2, 3, 3))}, status, (slice(0, 2), slice(0, 4)))
    merged = red.merge(
        [((0, 0), red.partial({"y": np.zeros((2, 3, 3))}, status, (slice(0, 2), slice(0, 3))))], (2, 3)
    )
    with pytest.raises(
        ReductionError, match=r"to_dataset: coords\['rho1'\] has shape \(5,\), expected \(2,\)"
    ):
        red.to_dataset(merged, {"rho1": np.arange(5)})


def test_spec_is_stable_and_json():
    a = parse_reduce({"y": ["std", Quantiles([0.9, 0.1]), "mean"]}, OUTS, ("rho1", "rho2"))
    b = parse_reduce({"y": [Quantiles([0.1, 0.9]), "mean", "std", "std"]}, OUTS, ("rho1", "rho2"))
    assert a.spec() == b.spec()
    assert json.loads(json.dumps(a.spec())) == a.spec()
    assert json.loads(json.dumps(Converged("y", stat="quantile", q=0.9, rtol=0.1).spec()))["q"] == 0.9
    assert parse_reduce(None, OUTS, ("rho1",)) is None and parse_reduce({}, OUTS, ("rho1",)) is None


def test_extra_dims_named_per_output_when_they_differ():
    outs = {"a": Output(), "b": Output()}
    red = parse_reduce({"a": Quantiles([0.5]), "b": Quantiles([0.1, 0.9])}, outs, ("sample",))
    docs = [((0,), red.partial({"a": np.arange(5.0), "b": np.arange(5.0)}, np.full(5, OK), (slice(0, 5),)))]
    ds = red.to_dataset(red.merge(docs, (5,)))
    assert ds["a_quantile"].dims == ("quantile_a",) and ds["b_quantile"].dims == ("quantile_b",)


def test_the_dataset_is_the_one_xarrays_ordinary_constructors_build():
    """to_dataset builds its variables on xarray's fast path (no dask.array import): the
    result is identical to the same data through the ordinary constructors."""
    import xarray as xr

    outs = {"y": Output(), "c": Output(dims=("t",), shape=(2,), coords={"t": ["early", "late"]})}
    red = parse_reduce(
        {
            "y": ["mean", "std", Quantiles([0.1, 0.9]), Histogram([0.0, 1.0, 2.0]), Exceedance(1.0)],
            "c": ["sum", Exceedance(0.5), Exceedance(2.0)],
        },
        outs,
        ("rho1", "rho2"),
        dims="rho2",
    )
    values = {"y": np.linspace(0, 2, 6).reshape(2, 3), "c": np.arange(12.0).reshape(2, 3, 2)}
    doc = red.partial(values, np.full((2, 3), OK), (slice(0, 2), slice(0, 3)))
    ds = red.to_dataset(red.merge([((0, 0), doc)], (2, 3)), {"rho1": np.array([10.0, 20.0])})
    ordinary = xr.Dataset(
        {k: (v.dims, np.array(v.values), v.attrs) for k, v in ds.data_vars.items()},
        coords={k: (c.dims, np.array(c.values)) for k, c in ds.coords.items()},
        attrs=ds.attrs,
    )
    assert ds.identical(ordinary)
    assert ds["c_sum"].sel(t="late", rho1=20.0).item() == 7.0 + 9.0 + 11.0


def test_the_status_shows_integer_totals_whole():
    """`daskbatch status` showed a count or an exact sum of 30001181 as 3.00012e+07."""
    from daskbatch.reduced import _number

    assert _number(np.int64(30001181)) == "30001181" and _number(30001181) == "30001181"
    assert _number(np.uint64(2**63)) == str(2**63) and _number(np.float64(1 / 3)) == "0.333333"
    assert _number(True) == "True"


def test_a_kernel_with_only_text_outputs_is_not_told_to_reduce_its_text():
    """The fix offered was reduce={'txt': 'mean'}, itself refused next."""
    with pytest.raises(ReductionError, match=r"no output of this kernel holds numbers .*reduce='count'") as e:
        parse_reduce(outputs={"txt": Output(dtype="str")}, batch_dims=("sample",), reduce="mean")
    assert "reduce={'txt'" not in str(e.value)
