"""Chained stages: FromStore reads another store's outputs, Pipeline runs stages in order."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import daskbatch as db
from daskbatch.errors import FingerprintMismatchError, SpaceError
from daskbatch.pipeline import FromStore, Pipeline, PipelineError, Stage
from daskbatch.space import space_from_spec
from daskbatch.store import Store
from daskbatch.testing import affine, assert_stores_identical, blocks_done, fail_on_multiples, run_killed

N, CHUNK = 100, 10
T = np.arange(4.0)

KERNELS = '''
import os
import sys
import time

import numpy as np

import daskbatch as db
from daskbatch.pipeline import Pipeline, Stage

T = np.arange(4.0)


@db.kernel(outputs={"d": db.Output(dims=("t",), shape=(4,))})
def forward(m, c):
    """The forward model: a line through 4 points."""
    return m * T + c


@db.kernel(outputs={"d_noisy": db.Output(dims=("t",), shape=(4,))})
def add_noise(d, sample, sigma=0.1, seed=0):
    """Noise of its own seed, a pure function of (seed, sample index)."""
    time.sleep(float(os.environ.get("PIPELINE_DELAY", "0")))
    rng = np.random.default_rng([seed, int(sample)])
    return d + sigma * rng.standard_normal(d.shape)


@db.kernel(outputs={"m_hat": db.Output(), "c_hat": db.Output()}, per_sample=False)
def invert(d_noisy):
    """Least squares, for a whole block at once."""
    g = np.stack([T, np.ones_like(T)], axis=1)
    coef = np.linalg.lstsq(g, np.asarray(d_noisy).T, rcond=None)[0]
    return {"m_hat": coef[0], "c_hat": coef[1]}


def pipeline(folder, seed=1, overwrite=False):
    space = db.MonteCarlo({"m": db.Uniform(0, 1), "c": db.Normal(0, 1)}, n=%(n)d, seed=seed)
    return Pipeline([
        Stage(forward, os.path.join(folder, "forward.zarr"), space=space, overwrite=overwrite),
        Stage(add_noise, os.path.join(folder, "noisy.zarr"), constants={"seed": 7}),
        Stage(invert, os.path.join(folder, "inverted.zarr")),
    ])


def main():
    pipeline(sys.argv[1]).run(cluster="serial", chunk_size=%(chunk)d, progress=False)
'''


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    """The kernels and the pipeline builder, in a module of their own (a subprocess
    imports it too)."""
    name = f"pipeline_kernels_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(KERNELS % {"n": N, "chunk": CHUNK})
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def _expected(folder: Path):
    """What the three stages should hold, computed with numpy from stage 1's parameters."""
    up = db.open(folder / "forward.zarr")
    m, c = up.m.values, up.c.values
    d = m[:, None] * T + c[:, None]
    noisy = np.stack([d[i] + 0.1 * np.random.default_rng([7, i]).standard_normal(4) for i in range(N)])
    g = np.stack([T, np.ones_like(T)], axis=1)
    m_hat, c_hat = np.linalg.lstsq(g, noisy.T, rcond=None)[0]
    return d, noisy, m_hat, c_hat


def _history(store: Path) -> list:
    return Store(store).require_info()["history"]


# --------------------------------------------------------------------------- three stages


def test_three_stages_values_match_numpy_and_a_rerun_computes_nothing(tmp_path, kernels, capsys):
    results = kernels.pipeline(tmp_path).run(cluster="serial", chunk_size=CHUNK)
    assert [r.samples["ok"] for r in results] == [N, N, N]
    d, noisy, m_hat, c_hat = _expected(tmp_path)
    assert np.array_equal(db.open(tmp_path / "forward.zarr").d.values, d)
    assert np.array_equal(db.open(tmp_path / "noisy.zarr").d_noisy.values, noisy)
    inv = db.open(tmp_path / "inverted.zarr")
    np.testing.assert_allclose(inv.m_hat.values, m_hat, rtol=1e-12)
    np.testing.assert_allclose(inv.c_hat.values, c_hat, rtol=1e-12)
    # one display: a line per stage before its bar, the bar labelled with the stage
    err = capsys.readouterr().err
    assert "stage 1 of 3: forward -> " in err and "stage 3 of 3: invert -> " in err
    assert "stage 2/3: 100 / 100 samples" in err
    # the values read from upstream are referenced, not copied
    assert "d" not in db.open(tmp_path / "noisy.zarr").data_vars

    again = kernels.pipeline(tmp_path).run(cluster="serial", chunk_size=CHUNK)
    assert [r.blocks_computed for r in again] == [0, 0, 0]
    assert [len(_history(tmp_path / s)) for s in ("forward.zarr", "noisy.zarr", "inverted.zarr")] == [1, 1, 1]
    assert "stage 2 of 3: add_noise -> " in capsys.readouterr().err  # "complete, nothing to compute"
    # a stage's store is resumable and checkable on its own: its space is rebuilt from its spec
    spec = Store(tmp_path / "noisy.zarr").require_info()["space_spec"]
    rebuilt = space_from_spec(spec)
    assert isinstance(rebuilt, FromStore) and rebuilt.spec() == spec
    assert db.validate(tmp_path / "noisy.zarr", n=5).ok


def test_killed_in_stage_2_resumes_there(tmp_path, kernels):
    noisy = tmp_path / "noisy.zarr"
    # the kernels imported by their module's name (not as __main__), as this process does
    script = f"import sys; sys.path.insert(0, '.'); import {kernels.__name__} as k; k.main()"
    killed = run_killed(
        [sys.executable, "-c", script, str(tmp_path)],
        until=lambda: blocks_done(noisy) >= 1,
        signum=signal.SIGKILL,
        env={**os.environ, "PIPELINE_DELAY": "0.02"},  # 0.2 s per block of stage 2
        cwd=tmp_path,
        poll=0.02,
    )
    assert killed.caught and killed.signalled, killed.stderr
    done = blocks_done(noisy)
    assert 1 <= done < N // CHUNK
    assert blocks_done(tmp_path / "forward.zarr") == N // CHUNK
    assert not (tmp_path / "inverted.zarr").exists()

    results = kernels.pipeline(tmp_path).run(cluster="serial", chunk_size=CHUNK, progress=False)
    assert [r.complete for r in results] == [True, True, True]
    # stage 1 was not computed again; stage 2 kept its committed blocks
    assert len(_history(tmp_path / "forward.zarr")) == 1 and results[0].blocks_computed == 0
    history = _history(noisy)
    assert len(history) == 2 and history[1]["blocks_pending"] == N // CHUNK - done
    assert results[1].blocks_computed == N // CHUNK - done

    # the same values as a pipeline that was never stopped
    ref = tmp_path / "ref"
    ref.mkdir()
    kernels.pipeline(ref).run(cluster="serial", chunk_size=CHUNK, progress=False)
    for name in ("forward.zarr", "noisy.zarr", "inverted.zarr"):
        assert_stores_identical(tmp_path / name, ref / name)


def test_a_new_seed_in_stage_1_refuses_stage_2_naming_it(tmp_path, kernels):
    kernels.pipeline(tmp_path).run(cluster="serial", chunk_size=CHUNK, progress=False)
    before = db.open(tmp_path / "noisy.zarr").d_noisy.values
    with pytest.raises(FingerprintMismatchError) as e:
        kernels.pipeline(tmp_path, seed=2, overwrite=True).run(
            cluster="serial", chunk_size=CHUNK, progress=False
        )
    msg = str(e.value)
    assert "noisy.zarr" in msg and "(stage 2)" in msg and "forward.zarr" in msg
    assert "seed 1 -> 2" in msg and "overwrite=True" in msg
    assert "\n" not in msg
    # stage 1 was computed again with the new seed; stage 2 was left as it was
    assert Store(tmp_path / "forward.zarr").require_info()["seed"] == 2
    assert np.array_equal(db.open(tmp_path / "noisy.zarr").d_noisy.values, before)
    # daskbatch.run itself refuses it too, and names the seed
    with pytest.raises(FingerprintMismatchError, match=r"seed 1 -> 2") as e:
        db.run(
            kernels.add_noise,
            FromStore(tmp_path / "forward.zarr", ["d", "sample"]),
            tmp_path / "noisy.zarr",
            cluster="serial",
            constants={"seed": 7},
            progress=False,
        )
    assert ".seed: 1 -> 2" in str(e.value), str(e.value)
    # giving stage 2 (and 3) overwrite=True computes them again from the new stage 1
    p = kernels.pipeline(tmp_path, seed=2)
    for stage in p.stages[1:]:
        stage.run_options["overwrite"] = True
    p.run(cluster="serial", chunk_size=CHUNK, progress=False)
    _, noisy, m_hat, _ = _expected(tmp_path)
    assert np.array_equal(db.open(tmp_path / "noisy.zarr").d_noisy.values, noisy)
    np.testing.assert_allclose(db.open(tmp_path / "inverted.zarr").m_hat.values, m_hat, rtol=1e-12)


def test_a_resumed_stage_store_is_resumable_from_the_command_line(tmp_path, kernels):
    kernels.pipeline(tmp_path).run(cluster="serial", chunk_size=CHUNK, progress=False)
    st = Store(tmp_path / "noisy.zarr")
    st.unmark([(3,), (7,)])  # as a stopped run leaves them
    r = run_cli("resume", str(tmp_path / "noisy.zarr"), "--no-progress", "--cluster", "serial")
    assert r.returncode == 0, r.stderr
    _, noisy, _, _ = _expected(tmp_path)
    assert np.array_equal(db.open(tmp_path / "noisy.zarr").d_noisy.values, noisy)
    assert blocks_done(tmp_path / "noisy.zarr") == N // CHUNK


# --------------------------------------------------------------------------- FromStore


def _grid_store(tmp_path: Path) -> Path:
    store = tmp_path / "grid.zarr"
    db.run(affine, db.Grid(a=[1.0, 2.0, 3.0], b=[10.0, 20.0]), store, cluster="serial", progress=False)
    return store


def test_fromstore_of_a_grid_keeps_its_dims_and_coordinates(tmp_path):
    up = _grid_store(tmp_path)
    space = FromStore(up, {"a": "a", "prev": "y", "bb": "b"})
    assert space.batch_dims == ("a", "b") and space.batch_shape == (3, 2)
    assert space.params["a"].is_axis and not space.params["prev"].stored
    got = space.block((slice(1, 3), slice(0, 2)))
    assert got["a"].tolist() == [2.0, 3.0]
    assert got["prev"].tolist() == [[12.0, 22.0], [13.0, 23.0]]
    assert got["bb"].tolist() == [[10.0, 20.0], [10.0, 20.0]]

    @db.kernel(outputs={"z": db.Output()})
    def combine(a, prev, bb):
        return prev - a - bb

    out = tmp_path / "down.zarr"
    db.run(combine, space, out, cluster="serial", progress=False)
    ds = db.open(out)
    assert ds.a.values.tolist() == [1.0, 2.0, 3.0] and ds.b.values.tolist() == [10.0, 20.0]
    assert (ds.z.values == 0).all()
    assert np.array_equal(space.to_dask(((2, 1), (2,)))["prev"].compute(), db.open(up).y.values)
    assert space.head(2).batch_shape == (1, 2)


def test_fromstore_copy_stores_the_values_read(tmp_path):
    up = tmp_path / "mc.zarr"
    db.run(affine, db.MonteCarlo({"a": db.Uniform(0, 1)}, n=30, seed=3), up, cluster="serial", progress=False)
    out = tmp_path / "copied.zarr"
    db.run(affine, FromStore(up, {"a": "y", "b": "sample"}, copy=True), out, cluster="serial", progress=False)
    ds = db.open(out)
    assert np.array_equal(ds.a.values, db.open(up).y.values)
    assert ds.b.values.tolist() == list(range(30))
    assert np.array_equal(ds.y.values, ds.a.values + np.arange(30))


def test_failed_upstream_samples_pass_their_stored_values_and_their_status(tmp_path):
    up = tmp_path / "failing.zarr"
    db.run(fail_on_multiples, db.Grid(i=np.arange(10)), up, cluster="serial", progress=False)
    space = FromStore(up, {"a": "y", "upstream_status": "status"})
    assert space.upstream_failed == 1  # i = 7
    got = space.block((slice(0, 10),))
    assert np.isnan(got["a"][7]) and got["a"][6] == 6.0
    assert got["upstream_status"][7] == db.STATUS["failed"] and got["upstream_status"][6] == db.STATUS["ok"]


def test_fromstore_refusals_are_one_line_naming_what_to_do(tmp_path):
    up = _grid_store(tmp_path)
    cases = [
        (lambda: FromStore(tmp_path / "none.zarr"), "does not exist; run the stage that writes it first"),
        (
            lambda: FromStore(up, ["q"]),
            r"'q' is not a variable of store .* its variables are \['y', 'a', 'b', 'status'\]",
        ),
        (lambda: FromStore(up, ["status"]), r"variables=\{'upstream_status': 'status'\}"),
        (lambda: FromStore(up, {"a": "y"}), "'a' is a batch dim of the store; pass 'y' under another name"),
        (lambda: FromStore(up, "y"), "must be a list"),
        (lambda: FromStore(up, {"1x": "y"}), "valid Python identifier"),
        (lambda: FromStore(up, copy=1), "copy=1"),
    ]
    for make, match in cases:
        with pytest.raises(SpaceError, match=match) as e:
            make()
        assert "\n" not in str(e.value)


def test_an_incomplete_upstream_is_refused_with_its_pending_samples(tmp_path):
    up = tmp_path / "part.zarr"
    db.run(affine, db.Grid(a=np.arange(40.0)), up, cluster="serial", chunk_size=10, progress=False)
    Store(up).unmark([(1,), (2,)])
    with pytest.raises(SpaceError) as e:
        FromStore(up)
    msg = str(e.value)
    assert "is not complete: 20 of 40 samples are pending (2 of 4 blocks done)" in msg
    assert "finish it first" in msg and "\n" not in msg


# --------------------------------------------------------------------------- checks before running


def test_a_pipeline_is_checked_before_anything_runs(tmp_path, kernels):
    space = db.MonteCarlo({"m": db.Uniform(0, 1), "c": db.Normal(0, 1)}, n=10, seed=1)
    one = Stage(kernels.forward, tmp_path / "one.zarr", space=space)
    cases = [
        (lambda: Pipeline([]), "stages is empty"),
        (lambda: Pipeline(one), r"must be a list of stages"),
        (lambda: Pipeline([Stage(kernels.forward, tmp_path / "x.zarr")]), "stage 1 .* has no space"),
        (
            lambda: Pipeline([one, Stage(kernels.invert, tmp_path / "one.zarr")]),
            "stages 1 and 2 both write store",
        ),
        (lambda: Pipeline([one, "two"]), "stage 2 is 'two', not a Stage"),
        (
            lambda: Stage(kernels.forward, tmp_path / "s.zarr", space=space, colour="red"),
            r"unknown option\(s\) \['colour'\]",
        ),
        (
            lambda: Stage(kernels.forward, tmp_path / "s.zarr", space=space, variables=["d"]),
            "variables= and copy=",
        ),
        (lambda: Stage(len, tmp_path / "s.zarr"), "not a daskbatch kernel"),
    ]
    for make, match in cases:
        with pytest.raises(PipelineError, match=match) as e:
            make()
        assert "\n" not in str(e.value)

    # the invert kernel wants d_noisy; stage 1's store has d, m, c
    wrong = Pipeline([one, Stage(kernels.invert, tmp_path / "two.zarr")])
    with pytest.raises(PipelineError) as e:
        wrong.run(cluster="serial", progress=False)
    msg = str(e.value)
    assert "stage 2 of 2 (invert -> " in msg and "['d_noisy']" in msg
    assert "variables={'d_noisy': 'd'}" in msg and "\n" not in msg
    assert not (tmp_path / "one.zarr").exists()  # nothing ran
    for bad, match in [
        ({"d_noisy": "nope"}, "'nope' is not a variable of stage 1's store"),
        ({"other": "d"}, "kernel 'invert' has no argument 'other'"),
        ({"sample": "d"}, "'sample' is a batch dim"),
    ]:
        p = Pipeline([one, Stage(kernels.invert, tmp_path / "two.zarr", variables=bad)])
        with pytest.raises(PipelineError, match=match):
            p.run(cluster="serial", progress=False)
    with pytest.raises(PipelineError, match=r"unknown option\(s\) \['speed'\]"):
        Pipeline([one]).run(speed=2)
    assert not (tmp_path / "one.zarr").exists()
    # mapped, it runs
    p = Pipeline([one, Stage(kernels.invert, tmp_path / "two.zarr", variables={"d_noisy": "d"})])
    results = p.run(cluster="serial", progress=False)
    up = db.open(tmp_path / "one.zarr")
    np.testing.assert_allclose(db.open(results[1].store).m_hat.values, up.m.values, rtol=1e-9)
    assert [s.complete for s in p.status()] == [True, True]


def test_a_fromstore_space_in_a_spec_file(tmp_path, cli):
    up = tmp_path / "up.zarr"
    db.run(affine, db.MonteCarlo({"a": db.Uniform(0, 1)}, n=20, seed=3), up, cluster="serial", progress=False)
    (tmp_path / "down.toml").write_text(
        textwrap.dedent(
            """\
            kernel = "daskbatch.testing:affine"
            store = "down.zarr"
            cluster = "serial"

            [constants]
            scale = 2.0

            [space]
            type = "fromstore"
            path = "up.zarr"
            variables = { a = "y" }
            """
        )
    )
    r = cli("run", "down.toml", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(db.open(tmp_path / "down.zarr").y.values, 2.0 * db.open(up).y.values)
    r = cli("resume", str(tmp_path / "down.zarr"), "--no-progress")
    assert r.returncode == 0, r.stderr


def test_daskbatch_run_of_several_spec_files_runs_them_as_stages(tmp_path, cli):
    (tmp_path / "one.toml").write_text(
        textwrap.dedent(
            """\
            kernel = "daskbatch.testing:affine"
            store = "one.zarr"
            cluster = "serial"

            [space]
            type = "montecarlo"
            n = 20
            seed = 3

            [space.params.a]
            dist = "uniform"
            low = 0
            high = 1
            """
        )
    )
    (tmp_path / "two.toml").write_text(
        textwrap.dedent(
            """\
            kernel = "daskbatch.testing:affine"
            store = "two.zarr"
            cluster = "serial"

            [constants]
            scale = 3.0

            [space]
            type = "fromstore"
            path = "one.zarr"
            variables = { a = "y" }
            """
        )
    )
    r = cli("run", "one.toml", "two.toml", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stage 1 of 2: one.toml" in r.stdout and "stage 2 of 2: two.toml" in r.stdout
    one, two = db.open(tmp_path / "one.zarr"), db.open(tmp_path / "two.zarr")
    assert np.array_equal(two.y.values, 3.0 * one.y.values)
    again = cli("run", "one.toml", "two.toml", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("nothing to compute") == 2, again.stdout
    bad = cli("run", "one.toml", "two.toml", "--store", "x.zarr", cwd=tmp_path)
    assert bad.returncode != 0 and "--store applies to one spec file" in bad.stderr


@db.kernel(outputs={"y": db.Output(), "peak": db.Output(store=False)}, per_sample=False)
def twice(a):
    """y stored; peak only reduced."""
    return {"y": 2.0 * a, "peak": 3.0 * a}


def test_every_stage_s_run_options_are_checked_before_stage_1_runs(tmp_path):
    space = db.MonteCarlo({"a": db.Uniform(0, 1)}, n=20, seed=2)
    rule = db.Converged("y", rtol=0.1)

    def three(one=None, two=None, third=None, kernel2=affine):
        return Pipeline(
            [
                Stage(affine, tmp_path / "one.zarr", space=space, **(one or {})),
                Stage(kernel2, tmp_path / "two.zarr", variables={"a": "y"}, **(two or {})),
                Stage(affine, tmp_path / "three.zarr", variables={"a": "y"}, **(third or {})),
            ]
        )

    cases = [
        (three(two={"reduce": "median"}), {}, "stage 2 of 3", "unknown statistic 'median'"),
        (three(two={"reduce": {"nope": "mean"}}), {}, "stage 2 of 3", "'nope' is not an output"),
        (three(two={"reduce": "mean", "reduce_dims": "t"}), {}, "stage 2 of 3", "reduce_dims: 't' is not"),
        (three(third={"reduce_dims": "sample"}), {}, "stage 3 of 3", "reduce_dims='sample' is given without"),
        (three(third={"until": rule}), {}, "stage 3 of 3", "until=Converged(output='y'"),
        (three(), {"until": rule}, "stage 2 of 3", "leave until= out of this stage"),
        (three(third={"retries": -1}), {}, "stage 3 of 3", "retries=-1 must be"),
        (three(two={"timeout": 0}), {}, "stage 2 of 3", "timeout=0 must be"),
        (three(third={"memory_limit": "lots"}), {}, "stage 3 of 3", "memory_limit='lots' is not a size"),
        (three(two={"kernel_changed": "x"}), {}, "stage 2 of 3", "kernel_changed='x' is not valid"),
        (three(third={"cluster": "nosuch"}), {}, "stage 3 of 3", "cluster='nosuch' is not valid"),
        (three(two={"chunk_size": "big"}), {}, "stage 2 of 3", "chunk_size='big' is not valid"),
        (three(kernel2=twice), {}, "stage 2 of 3", "output 'peak' is declared Output(store=False)"),
        (three(one={"reduce": "mean", "reduce_dims": "t"}), {}, "stage 1 of 3", "reduce_dims: 't' is not"),
    ]
    for pipeline, common, stage, says in cases:
        with pytest.raises(PipelineError) as e:
            pipeline.run(cluster="serial", progress=False, **common)
        msg = str(e.value)
        assert f"Pipeline: {stage} (" in msg and says in msg and "\n" not in msg, msg
        assert not any(tmp_path.iterdir()), (msg, list(tmp_path.iterdir()))  # nothing ran

    # the same options where they work: stage 2 reduces over stage 1's batch dim, stage 1 grows
    ok = three(
        one={"reduce": "mean", "until": db.Converged("y", rtol=0.5, min_n=20)},
        two={"reduce": {"peak": ["mean", "max"]}},
        kernel2=twice,
    )
    results = ok.run(cluster="serial", progress=False)
    y = db.open(tmp_path / "one.zarr").y.values
    two = db.open(tmp_path / "two.zarr")
    assert float(two.peak_max) == pytest.approx(3.0 * y.max()) and "peak" not in two.data_vars
    assert results[2].n_samples == y.size
