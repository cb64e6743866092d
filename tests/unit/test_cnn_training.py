"""CNN training that cannot silently collapse, on every backend, and the backend choice.

The cause of the collapse (a saturated sigmoid under a clipped cross-entropy has no
gradient on Keras' JAX and PyTorch losses) is checked directly; the guard's checks and
restarts, training on logits from a saturated start, and the backend/thread choice are
tested on small arrays. The cohorts come from :mod:`dpnbids.sim.maps`, a generator unlike
``dpnbids-synth`` (connectivity effects, heavy-tailed noise, maps 10x and 100x larger).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpnbids.config import available_cpus
from dpnbids.exceptions import InputError
from dpnbids.learn import backend as kb
from dpnbids.learn import guard
from dpnbids.learn.params import ModelParams, TrainParams
from dpnbids.learn.train import _fit_cnn
from dpnbids.sim.maps import make_map_cohort

ROOT = Path(__file__).resolve().parents[2]
HAS_JAX = importlib.util.find_spec("jax") is not None


# ----------------------------------------------------------------------------- guard maths
def test_bce_from_logits_matches_the_definition():
    z = np.array([-30.0, -1.0, 0.0, 2.0, 40.0])
    y = np.array([1, 0, 1, 1, 0])
    # -log(sigmoid(z)) = log(1 + e^-z) for responders, -log(1 - sigmoid(z)) = log(1 + e^z)
    want = np.mean(np.where(y == 1, np.logaddexp(0, -z), np.logaddexp(0, z)))
    assert guard.bce_from_logits(z, y) == pytest.approx(float(want), rel=1e-12)
    assert guard.bce_from_logits(np.zeros(4), [0, 1, 0, 1]) == pytest.approx(np.log(2))


def test_flat_and_saturated_detectors():
    assert guard.flat_and_high([0.9, 5.978, 5.978, 5.978, 5.978])
    assert not guard.flat_and_high([5.978, 5.978, 5.978])  # too few epochs
    assert not guard.flat_and_high([0.4, 0.4, 0.4, 0.4])  # flat but learned
    assert not guard.flat_and_high([6.0, 5.0, 4.0, 3.0])  # moving
    assert guard.saturated([12.0, 30.0, 9.5]) and guard.saturated([-12.0, -20.0])
    assert not guard.saturated([12.0, -30.0]) and not guard.saturated([12.0, 3.0])


# ----------------------------------------------------------------------------- training
def _separable(n=24, grid=(12, 13, 12), seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([1, 0] * (n // 2))
    x = rng.normal(size=(n,) + grid + (2,)).astype(np.float32)
    x[:, 3:7, 4:8, 3:7, 0] += np.where(y == 1, 1.5, -1.5)[:, None, None, None]
    return x, y


def test_initial_loss_is_log2_and_recorded():
    x, y = _separable()
    _, hist, _ = _fit_cnn(x[:16], y[:16], x[16:], y[16:], ModelParams(epsilon=1e-3),
                          TrainParams(epochs=2, patience=10), seed=3)
    assert hist["initial_loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert hist["restarts"] == [] and len(hist["loss"]) == 2


def test_guard_restarts_a_diverging_attempt(monkeypatch):
    """A first attempt that diverges is abandoned: training restarts from a new seed at half
    the learning rate, and the history records the restart and its reason."""
    x, y = _separable()
    calls = []
    real = guard.TrainingGuard.on_epoch_end

    def failing_first(self, epoch, logs=None):
        if not calls or calls[-1] == "first":
            calls.append("first")
            return self._stop(self.model, epoch + 1, "training loss is not finite (NaN/inf)")
        return real(self, epoch, logs)

    def mark_second(self, model):
        if calls:
            calls.append("second")
        return None

    monkeypatch.setattr(guard.TrainingGuard, "on_epoch_end", failing_first)
    monkeypatch.setattr(guard.TrainingGuard, "check_initial", mark_second)
    _, hist, _ = _fit_cnn(x[:16], y[:16], x[16:], y[16:],
                          ModelParams(epsilon=1e-3, learning_rate=1e-3),
                          TrainParams(epochs=3, patience=10), seed=3)
    assert len(hist["restarts"]) == 1
    first = hist["restarts"][0]
    assert first["attempt"] == 0 and first["learning_rate"] == pytest.approx(1e-3)
    assert "not finite" in first["reason"] and first["epoch"] == 1
    assert len(hist["loss"]) == 3  # the second attempt ran to the end


def test_insane_initial_loss_trips_the_guard():
    import keras

    from dpnbids.learn.model import build_voxnet, logit_model

    x, y = _separable()
    model = build_voxnet(x.shape[1:])
    head = model.get_layer("logit")
    head.set_weights([head.get_weights()[0], np.array([40.0], np.float32)])
    trainer = logit_model(model)
    g = guard.TrainingGuard(x, np.zeros_like(y), x, y)  # every label 0, every logit +40
    with pytest.raises(guard.GuardTripped, match="initial loss"):
        g.check_initial(trainer)
    assert isinstance(trainer, keras.Model)


def test_training_on_logits_recovers_from_a_saturated_start():
    """Every subject starts saturated at 'responder' (logit +25, float32 probability 1.0):
    trained on logits the network still has a gradient, moves towards the non-responders
    and ranks the held-out subjects by the planted blob (with a clipped cross-entropy of
    the probability it would not move at all on JAX)."""
    import keras

    from dpnbids.learn.model import build_voxnet, logit_model, predict_logit

    x, y = _separable(n=32)
    keras.utils.set_random_seed(0)
    model = build_voxnet(x.shape[1:], epsilon=1e-3)
    head = model.get_layer("logit")
    head.set_weights([head.get_weights()[0], np.array([25.0], np.float32)])
    trainer = logit_model(model)
    trainer.compile(optimizer=model.optimizer,
                    loss=keras.losses.BinaryCrossentropy(from_logits=True))
    assert float(np.asarray(model.predict(x[:4], verbose=0)).min()) == 1.0
    trainer.fit(x[:24], y[:24].astype(np.float32), epochs=8, batch_size=4, verbose=0)
    z = predict_logit(model, x[24:])
    assert float(np.mean(z)) < 25.0 - 0.5
    from dpnbids.learn.metrics import binary_metrics

    assert binary_metrics(y[24:], z)["auc"] >= 0.75


# ----------------------------------------------------------------------------- backends
JAX_SCRIPT = """
import json, numpy as np, keras
p = keras.ops.convert_to_tensor(np.array([[1.0], [1.0]], np.float32))
t = np.array([[0.0], [1.0]], np.float32)
import jax
def loss(p):
    return keras.ops.mean(keras.losses.binary_crossentropy(t, p))
g = np.asarray(jax.grad(loss)(p))
print("RESULT " + json.dumps({"grad": g.ravel().tolist()}))
"""


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed (it is in the test extras)")
def test_the_collapse_mechanism_on_jax():
    """On JAX, the cross-entropy of a sigmoid output saturated at 1 has zero gradient for a
    wrongly classified subject: a network that saturates never moves again. This is why
    dpnbids trains on logits."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    assert json.loads(line[len("RESULT "):])["grad"] == [0.0, 0.0]


def test_resolve_backend_rules():
    assert kb.resolve_backend("tensorflow", {}) == "tensorflow"
    assert kb.resolve_backend("auto", {"KERAS_BACKEND": "tensorflow"}) == "tensorflow"
    if not kb.cuda_present():
        assert kb.resolve_backend("auto", {}) == "tensorflow"
    with pytest.raises(InputError, match="not a backend"):
        kb.resolve_backend("auto", {"KERAS_BACKEND": "numpy"})
    with pytest.raises(InputError, match="not one of"):
        kb.resolve_backend("mxnet", {})


def test_thread_environment_follows_the_allocation():
    env = kb.thread_environment("tensorflow", 3)
    assert env["TF_NUM_INTRAOP_THREADS"] == "3" and env["OMP_NUM_THREADS"] == "3"
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "1" and env["TF_NUM_INTEROP_THREADS"] == "1"
    flags = kb.thread_environment("jax", 1)["XLA_FLAGS"].split()
    assert "intra_op_parallelism_threads=1" in flags
    assert "--xla_cpu_multi_thread_eigen=false" in flags
    environ = {"KERAS_BACKEND": "jax", "TF_NUM_INTRAOP_THREADS": "5"}
    assert kb.configure("tensorflow", threads=64, environ=environ) == "tensorflow"
    assert environ["KERAS_BACKEND"] == "tensorflow"
    assert environ["TF_NUM_INTRAOP_THREADS"] == "5"  # the user's setting wins
    assert environ["OMP_NUM_THREADS"] == str(available_cpus())  # capped at the CPUs


def test_available_cpus_reads_a_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


THREADS_SCRIPT = """
import json, os
from dpnbids.config import available_cpus
from dpnbids.learn.backend import configure
backend = configure("auto")
import keras, numpy as np, tensorflow as tf
from dpnbids.learn.model import build_voxnet
keras.utils.set_random_seed(0)  # the CLI runs with TF_DETERMINISTIC_OPS=1, which asks for a seed
m = build_voxnet((12, 13, 12, 2))
m.fit(np.zeros((4, 12, 13, 12, 2), "float32"), np.array([0, 1, 0, 1], "float32"), verbose=0)
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print("RESULT " + json.dumps({"cpus": available_cpus(), "backend": backend,
      "intra": os.environ["TF_NUM_INTRAOP_THREADS"], "names": names}))
"""


@pytest.mark.skipif(not Path("/usr/bin/taskset").exists(), reason="taskset is not installed")
def test_one_cpu_affinity_gives_one_compute_thread():
    """Under ``taskset -c 0`` the process sees one CPU and TensorFlow's compute pools get one
    thread, whatever the host's core count."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "KERAS_BACKEND")}
    env["PYTHONPATH"] = str(ROOT)
    cpu = str(sorted(os.sched_getaffinity(0))[0])
    proc = subprocess.run(["taskset", "-c", cpu, sys.executable, "-c", THREADS_SCRIPT],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads([ln for ln in proc.stdout.splitlines()
                      if ln.startswith("RESULT ")][-1][len("RESULT "):])
    assert out["cpus"] == 1 and out["intra"] == "1" and out["backend"] == "tensorflow"
    # one intra-op and one inter-op pool thread (a 64-core host would otherwise get 64)
    assert out["names"].count("tf_Compute") <= 2, out["names"]
    assert len(out["names"]) <= 8, out["names"]


# ----------------------------------------------------------------------------- cohorts
@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_map_cohort_generator_scales_and_plants(scale):
    small = make_map_cohort(8, 8, shape=(12, 14, 12), n_networks=4, effect="connectivity",
                            seed=1)
    big = make_map_cohort(8, 8, shape=(12, 14, 12), n_networks=4, effect="connectivity",
                          seed=1, scale=scale)
    np.testing.assert_allclose(big.x, small.x * scale, rtol=1e-4, atol=1e-4 * scale)
    assert big.x.shape == (16, 12, 14, 12, 4) and set(big.y.tolist()) == {0, 1}
    assert len(big.affected) == 2 and big.effect_mask.any()
    with pytest.raises(InputError, match="effect"):
        make_map_cohort(4, 4, effect="shift")


def _cv_auc(cohort, seed=3):
    from dpnbids.learn.cv import run_nested_cv
    from dpnbids.learn.params import ModelParams, TrainParams
    from dpnbids.learn.splits import make_outer_splits
    from dpnbids.learn.metrics import binary_metrics

    ids = [f"{i:02d}" for i in range(len(cohort.y))]
    folds = make_outer_splits(ids, cohort.y, n_folds=4, random_state=seed)
    res = run_nested_cv(cohort.x, cohort.y, ids, folds, model_params=ModelParams(epsilon=1e-3),
                        train_params=TrainParams(epochs=15, batch_size=4, patience=5),
                        baselines=(), random_state=seed)
    p = res.predictions
    flat = [k for k, h in res.histories.items()
            if guard.flat_and_high(h["val_loss"], epochs=len(h["val_loss"]))]
    return binary_metrics(p["true_label"], p["raw_score"])["auc"], flat


@pytest.mark.slow
def test_connectivity_effect_found_and_null_at_chance_on_another_generator():
    """On map cohorts unlike dpnbids-synth's (a connectivity change between networks, heavy-
    tailed noise, maps 10x the z scale), the CNN finds the planted effect, a null cohort of the
    same kind stays at chance, and no fold's validation loss is flat at a saturated value."""
    planted = make_map_cohort(16, 16, shape=(12, 14, 12), n_networks=3, n_affected=1,
                              effect="connectivity", effect_size=4.0, scale=10.0, seed=11)
    null = make_map_cohort(16, 16, shape=(12, 14, 12), n_networks=3, effect="none",
                           scale=10.0, seed=12)
    auc_planted, flat_planted = _cv_auc(planted)
    auc_null, flat_null = _cv_auc(null)
    assert auc_planted >= 0.8, auc_planted
    assert abs(auc_null - 0.5) <= 0.3, auc_null
    assert not flat_planted and not flat_null
