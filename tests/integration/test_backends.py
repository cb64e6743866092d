"""The CNN, its nested CV, the inner-fold ensemble and the attributions on Keras' JAX
backend (the GPU machines' backend; CPU jaxlib here), run in fresh processes because the
backend is fixed at import. TensorFlow is covered by every other test."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, numpy as np, keras
from dpnbids.learn.cv import run_nested_cv
from dpnbids.learn.params import ModelParams, TrainParams
from dpnbids.learn.splits import make_outer_splits
from dpnbids.learn import saliency as sal
from dpnbids.learn.metrics import binary_metrics
rng = np.random.default_rng(0)
n, grid = 24, (12, 13, 12)
y = np.array([1, 0] * (n // 2))
x = rng.normal(size=(n,) + grid + (2,)).astype("float32")
x[:, 3:7, 4:8, 3:7, 0] += np.where(y == 1, 1.5, -1.5)[:, None, None, None]
ids = [f"{i:02d}" for i in range(n)]
folds = make_outer_splits(ids, y, n_folds=2, random_state=1)
gaps = []
def on_fold(fm):
    base = fm.x_train.mean(axis=0)
    ig = sal.integrated_gradients(fm.model, fm.x_test, base, steps=8)
    change = sal.predict_score(fm.model, fm.x_test) - sal.predict_score(fm.model, base[None])
    gaps.append(float(np.max(np.abs(ig.reshape(len(ig), -1).sum(1) - change))
                      / max(float(np.abs(change).max()), 1e-3)))
res = run_nested_cv(x, y, ids, folds, model_params=ModelParams(epsilon=1e-3),
                    train_params=TrainParams(epochs=12, batch_size=4, patience=100,
                                             inner_folds=2),
                    baselines=(), random_state=0, on_fold=on_fold)
p = res.predictions[res.predictions["model"] == "cnn"]
print("RESULT " + json.dumps({
    "backend": keras.backend.backend(),
    "auc": binary_metrics(p["true_label"], p["probability"])["auc"],
    "probs": [float(v) for v in p["probability"]], "ig_gaps": gaps}))
"""


def _run(backend: str, script: str = SCRIPT, **extra_env) -> dict:
    """Run ``script`` in a fresh process on ``backend``; its ``RESULT {json}`` line."""
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), **extra_env}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_nested_cv_ensemble_and_attribution_on_jax():
    """A 2-fold nested CV with a 2-member inner-fold ensemble trains and finds a planted
    blob on JAX, integrated gradients keep completeness there, and the same seed gives the
    same predictions twice on CPU."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (it is in requirements.lock)")
    first, second = _run("jax"), _run("jax")
    assert first["backend"] == "jax"
    assert first["auc"] > 0.9, first
    assert max(first["ig_gaps"]) < 0.1, first["ig_gaps"]
    assert first["probs"] == second["probs"]


AGREE_SCRIPT = """
import json, numpy as np, keras
from dpnbids.learn.cv import run_nested_cv
from dpnbids.learn.params import ModelParams, TrainParams
from dpnbids.learn.splits import make_outer_splits
from dpnbids.learn.metrics import binary_metrics
from dpnbids.sim.maps import make_map_cohort
c = make_map_cohort(16, 16, shape=(12, 14, 12), n_networks=3, n_affected=1,
                    effect="connectivity", effect_size=4.0, scale=100.0, seed=11)
ids = [f"{i:02d}" for i in range(len(c.y))]
folds = make_outer_splits(ids, c.y, n_folds=4, random_state=3)
res = run_nested_cv(c.x, c.y, ids, folds, model_params=ModelParams(epsilon=1e-3),
                    train_params=TrainParams(epochs=15, batch_size=4, patience=5),
                    baselines=(), random_state=3)
p = res.predictions
print("RESULT " + json.dumps({"backend": keras.backend.backend(),
      "auc": binary_metrics(p["true_label"], p["raw_score"])["auc"],
      "restarts": sum(len(h.get("restarts", [])) for h in res.histories.values())}))
"""


@pytest.mark.slow
def test_backends_agree_on_a_planted_cohort():
    """TensorFlow (the CPU default: oneDNN graphs) and JAX (the GPU default) find the same
    planted effect on the same folds of a cohort unlike dpnbids-synth's (a connectivity
    change between networks, heavy-tailed noise, maps 100x the z scale; dpnbids.sim.maps):
    every AUC is high and they agree within the CV's noise. XLA on TensorFlow is left out: no
    default selects it (Keras' jit_compile="auto" is off on CPUs and JAX runs GPUs)."""
    runs = [_run("tensorflow", AGREE_SCRIPT)]
    if importlib.util.find_spec("jax") is not None:
        runs.append(_run("jax", AGREE_SCRIPT))
    aucs = [r["auc"] for r in runs]
    assert min(aucs) >= 0.8, runs
    assert max(aucs) - min(aucs) <= 0.15, runs
