"""tf.distribute: MirroredStrategy on two logical CPUs, MultiWorkerMirroredStrategy on loopback,
and RNNMonitor's rule that only the chief records; Keras's DataParallel on JAX where installed.

The strategies run in subprocesses: logical devices must be configured before TensorFlow
initialises its devices, and a multi-worker cluster needs one process per worker. All of them
are started together, and the single-device reference is trained here while they run.

(This module imports TensorFlow only where it needs it, so that the JAX run does not.)

One model holds all four cells side by side (one RNN layer and one Dense output each, one loss
per output), so that one `fit` gives each cell's loss curve: an output's loss depends on its
own branch only, and SGD updates each branch from its own loss.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_rnnx as rx
from keras_rnnx import monitor as monitor_module
from keras_rnnx.monitor import RNNMonitor

T, D, U = 5, 3, 4
N, BATCH, EPOCHS = 8, 4, 2  # 2 steps per epoch; 2 samples per replica and step
KINDS = tuple(rx.CELL_KINDS)
MULTI_WORKER_KINDS = ("forget",)  # one cell is enough to see who records
TESTS_DIR = Path(__file__).resolve().parent
DEADLINE_S = 240  # for all subprocesses together


def make_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, T, D)).astype("float32")
    target = x[:, :2, 0].sum(axis=1, keepdims=True).astype("float32")
    return x, {kind: target for kind in KINDS}


def build_model(kinds=KINDS) -> keras.Model:
    """The cells side by side, compiled with SGD. Each branch's initial weights depend on its
    cell only, so a branch trains alike in this model and in a model of fewer cells."""
    inputs = keras.Input((T, D), name="x")
    outputs = {kind: keras.layers.Dense(1, name=kind)(
        rx.RNN(rx.CELL_KINDS[kind](U), name=f"rnn_{kind}")(inputs)) for kind in kinds}
    model = keras.Model(inputs, outputs)
    for kind in kinds:
        rng = np.random.default_rng(KINDS.index(kind))
        for layer in (model.get_layer(f"rnn_{kind}"), model.get_layer(kind)):
            layer.set_weights([rng.normal(scale=0.4, size=w.shape).astype("float32")
                               for w in layer.get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss={kind: "mse" for kind in kinds})
    return model


def branch_weights(model) -> dict[str, list]:
    kinds = [kind for kind in KINDS if kind in model.output_names]
    return {kind: [w.tolist() for name in (f"rnn_{kind}", kind)
                   for w in model.get_layer(name).get_weights()] for kind in kinds}


def fit(model, callbacks=()) -> dict[str, list[float]]:
    """Trains `model` (from `build_model`); returns each cell's loss per epoch."""
    x, y = make_data()
    kinds = list(model.output_names)
    y = {kind: y[kind] for kind in kinds}
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                        callbacks=list(callbacks)).history
    if len(kinds) == 1:
        return {kinds[0]: history["loss"]}
    return {kind: history[f"{kind}_loss"] for kind in kinds}


def probe_batch(kinds=KINDS):
    x, y = make_data()
    return x[:2], {kind: y[kind][:2] for kind in kinds}


def work_around_keras_multi_worker_fit(model, strategy) -> None:
    """Lets Keras 3.15's `fit` run under MultiWorkerMirroredStrategy with several workers.

    Without it `fit` fails in keras/src/backend/tensorflow/trainer.py (also reported as
    tensorflow/tensorflow#72388): `_maybe_symbolic_build` hands `strategy.reduce` a tuple of
    PerReplica batches, which the collective strategy cannot convert ("Attempt to convert a
    value (PerReplica...)"); and `reduce_per_replica(..., "auto")` reduces the scalar logs
    across workers with `axis=0` ("Invalid reduction dimension 0 for input with 0
    dimensions"). This builds the compiled state before `fit`, and reduces the scalar logs
    with `axis=None`. Nothing here touches keras_rnnx.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    x, y = probe_batch(model.output_names)
    with strategy.scope():
        model._symbolic_build(data_batch=(x, y))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if (trainer._collective_all_reduce_multi_worker(strategy)
                and reduction in ("auto", "mean")):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None),
                                         values)
        return original(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica


def run_log_report(run_dir, model) -> dict:
    """What a worker's run log holds, checked against a fresh probe of the trained model."""
    from keras_rnnx import diagnostics, runlog

    if not (Path(run_dir) / runlog.LOG_FILE_NAME).exists():
        return {"exists": False}
    reader = runlog.RunReader(run_dir)
    x, y = probe_batch(model.output_names)
    final = diagnostics.probe(model, x, y)
    report = {"exists": True, "finished": reader.finished, "status": reader.end_status,
              "problems": reader.problems, "layers": sorted(reader.layers()),
              "probe_errors": [e.data for e in reader.events("probe_error")],
              "epoch_loss": reader.scalars("loss", phase="epoch")[1].tolist(), "steps": {},
              "h_diff": {}, "grad_h_diff": {}}
    for key in reader.layers():
        report["steps"][key] = np.asarray(reader.steps("grad_norm", key)).tolist()
        for kind, out in (("h", "h_diff"), ("grad_h", "grad_h_diff")):
            got = reader.frames(kind, key)[-1][1]
            want = final[key]["states"]["h"] if kind == "h" else final[key]["grad_h"]
            report[out][key] = float(np.abs(got - want).max())
    return report


# --- the subprocesses --------------------------------------------------------------------------

_PRELUDE = f"""
import json, os, sys
import numpy as np
import tensorflow as tf
{{configure}}
sys.path.insert(0, {str(TESTS_DIR)!r})
import test_distribute as common
from keras_rnnx.monitor import RNNMonitor, _is_chief
"""

MIRRORED = _PRELUDE.replace("{configure}", """
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""") + """
run_dir = os.path.join(sys.argv[1], "run")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = common.build_model()
monitor = RNNMonitor(run_dir, *common.probe_batch(), every=1)
losses = common.fit(model, [monitor])
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "variable": type(model.trainable_variables[0].value).__name__,
    "losses": losses,
    "weights": common.branch_weights(model),
    "probes": monitor.probe_count,
    "log": common.run_log_report(run_dir, model),
}))
"""

WORKER = _PRELUDE.replace("{configure}", "") + """
root = sys.argv[1]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
resolver = strategy.cluster_resolver
with strategy.scope():
    model = common.build_model(common.MULTI_WORKER_KINDS)
common.work_around_keras_multi_worker_fit(model, strategy)
run_dir = os.path.join(root, f"{resolver.task_type}{resolver.task_id}")
monitor = RNNMonitor(run_dir, *common.probe_batch(common.MULTI_WORKER_KINDS), every=1)
losses = common.fit(model, [monitor])
with strategy.scope():
    chief = _is_chief()
print(json.dumps({
    "task": [resolver.task_type, resolver.task_id],
    "replicas": strategy.num_replicas_in_sync,
    "is_chief_in_scope": chief,
    "losses": losses,
    "weights": common.branch_weights(model),
    "probes": monitor.probe_count,
    "log": common.run_log_report(run_dir, model),
}))
"""

JAX_DATA_PARALLEL = f"""
import json, sys
import jax
import keras
sys.path.insert(0, {str(TESTS_DIR)!r})
import test_distribute as common
distribution = keras.distribution.DataParallel(devices=jax.devices())
keras.distribution.set_distribution(distribution)
model = common.build_model()
losses = common.fit(model)
print(json.dumps({{
    "backend": keras.backend.backend(),
    "mesh": dict(zip(distribution.device_mesh.axis_names, distribution.device_mesh.shape)),
    "data_layout": list(distribution.get_data_layout((common.BATCH, common.T, common.D)).axes),
    "losses": losses,
    "weights": common.branch_weights(model),
}}))
"""
JAX_ENV = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                         + " --xla_force_host_platform_device_count=2").strip()}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(name: str, script: str, root: Path, run_dir: Path, env=None) -> subprocess.Popen:
    """Runs `script` with `run_dir` as argument and working directory; output to root/logs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    with open(root / "logs" / f"{name}.out", "w") as out, \
            open(root / "logs" / f"{name}.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), str(run_dir)], cwd=run_dir,
            stdout=out, stderr=err, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def wait_for(processes: dict[str, subprocess.Popen], root: Path, deadline: float) -> dict:
    """Each process's JSON report, or {"error": ...}. A failed worker stops its peers, which
    would otherwise wait for it until the deadline."""
    workers = {name: p for name, p in processes.items() if name.startswith("worker")}
    while time.monotonic() < deadline and any(p.poll() is None for p in processes.values()):
        if any(p.poll() not in (None, 0) for p in workers.values()):
            for p in workers.values():
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
    reports = {}
    for name, process in processes.items():
        err = (root / "logs" / f"{name}.err").read_text()[-3000:]
        if process.poll() is None:
            process.kill()
            process.wait()
            reports[name] = {"error": f"still running after {DEADLINE_S} s", "stderr": err}
        elif process.returncode != 0:
            reports[name] = {"error": f"exit code {process.returncode}", "stderr": err}
        else:
            out = (root / "logs" / f"{name}.out").read_text()
            reports[name] = json.loads(out.strip().splitlines()[-1])
    return reports


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts the MirroredStrategy run, the two loopback workers and (with JAX) the
    DataParallel run, trains the single-device reference meanwhile, and collects reports."""
    root = tmp_path_factory.mktemp("distribute")
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = {"mirrored": start("mirrored", MIRRORED, root, root / "mirrored")}
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        processes[f"worker{index}"] = start(f"worker{index}", WORKER, root,
                                            root / "multi_worker",
                                            {"TF_CONFIG": json.dumps(tf_config)})
    if importlib.util.find_spec("jax") is not None:
        processes["jax"] = start("jax", JAX_DATA_PARALLEL, root, root / "jax", JAX_ENV)
    deadline = time.monotonic() + DEADLINE_S
    try:
        reference = build_model()
        losses = fit(reference)
        reports = wait_for(processes, root, deadline)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    return {"losses": losses, "weights": branch_weights(reference), "root": root, **reports}


def assert_same_training(report, runs, what):
    """Loss curves and trained weights of each cell equal the single-device reference's."""
    loss_diffs, weight_diffs = {}, {}
    for kind in report["losses"]:
        got, want = np.asarray(report["losses"][kind]), np.asarray(runs["losses"][kind])
        assert got.shape == want.shape == (EPOCHS,)
        loss_diffs[kind] = float(np.abs(got - want).max())
        weight_diffs[kind] = max(float(np.abs(np.subtract(g, w)).max())
                                 for g, w in zip(report["weights"][kind], runs["weights"][kind]))
    print(f"{what}: max abs difference to one device, loss per epoch {loss_diffs}, "
          f"trained weights {weight_diffs}")
    for kind in report["losses"]:
        np.testing.assert_allclose(report["losses"][kind], runs["losses"][kind], rtol=1e-5,
                                   atol=1e-6, err_msg=f"{what}: {kind} loss curve")
        for got, want in zip(report["weights"][kind], runs["weights"][kind]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{what}: {kind} trained weights")


def assert_recorded(log, kinds, losses):
    assert log["exists"] and log["finished"] and log["status"] == "ok", log
    assert log["problems"] == [] and log["probe_errors"] == [], log
    assert log["layers"] == sorted(f"rnn_{kind}" for kind in kinds)
    steps_per_fit = EPOCHS * N // BATCH
    for key in log["layers"]:
        assert log["steps"][key] == list(range(steps_per_fit + 1)), log["steps"]
        assert log["h_diff"][key] < 1e-6 and log["grad_h_diff"][key] < 1e-6, log
    np.testing.assert_allclose(log["epoch_loss"],
                               np.sum([losses[kind] for kind in kinds], axis=0), rtol=1e-5)


def test_mirrored_strategy_trains_like_one_device_and_records(runs):
    report = runs["mirrored"]
    assert "error" not in report, report
    assert report["replicas"] == 2
    assert report["variable"] == "MirroredVariable"
    assert_same_training(report, runs, "MirroredStrategy on 2 logical CPUs")
    # RNNMonitor ran its probe after every step, under the strategy, and recorded it all.
    assert report["probes"] == EPOCHS * N // BATCH + 1  # at the start, then after each step
    assert_recorded(report["log"], KINDS, report["losses"])


def test_multi_worker_mirrored_strategy_on_loopback_only_chief_records(runs):
    """Two workers on 127.0.0.1, no "chief" task: worker 0 is the chief (TensorFlow's rule) and
    is the only one that writes a run log; both train exactly as one device would."""
    workers = [runs["worker0"], runs["worker1"]]
    for report in workers:
        assert "error" not in report, report
        assert report["replicas"] == 2
        assert_same_training(report, runs, f"MultiWorkerMirroredStrategy {report['task']}")
    chief, other = workers
    assert chief["task"] == ["worker", 0] and chief["is_chief_in_scope"] is True
    assert other["task"] == ["worker", 1] and other["is_chief_in_scope"] is False
    assert_recorded(chief["log"], MULTI_WORKER_KINDS, chief["losses"])
    assert other["probes"] == 0
    assert other["log"] == {"exists": False}, "a non-chief worker wrote a run log"
    assert sorted(p.name for p in (runs["root"] / "multi_worker").iterdir()) == ["worker0"]


def test_keras_data_parallel_on_jax_trains_like_one_device(runs):
    """Keras 3's own path for the other backends: `keras.distribution.DataParallel` (JAX, two
    host CPU devices), against the TensorFlow single-device reference."""
    pytest.importorskip("jax", reason="JAX is not installed (pip install jax): Keras's "
                                      "DataParallel path on the JAX backend is not tested")
    report = runs["jax"]
    assert "error" not in report, report
    assert report["backend"] == "jax"
    assert report["mesh"] == {"batch": 2} and report["data_layout"] == ["batch", None, None]
    assert_same_training(report, runs, "keras.distribution.DataParallel on JAX, 2 CPU devices")


# --- the chief rule, in this process -----------------------------------------------------------


class _Strategy:
    """Stands in for a multi-worker strategy: only its `cluster_resolver` is read."""

    def __init__(self, cluster, task_type, task_id):
        import tensorflow as tf

        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)


def in_cluster(monkeypatch, cluster, task_type, task_id):
    import tensorflow as tf

    strategy = _Strategy(cluster, task_type, task_id)
    monkeypatch.setattr(tf.distribute, "has_strategy", lambda: True)
    monkeypatch.setattr(tf.distribute, "get_strategy", lambda: strategy)
    return strategy


WORKERS = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
WITH_CHIEF = {"chief": ["127.0.0.1:0"], **WORKERS}


@pytest.mark.parametrize("cluster, task_type, task_id, chief", [
    (WORKERS, "worker", 0, True),
    (WORKERS, "worker", 1, False),
    (WITH_CHIEF, "chief", 0, True),
    (WITH_CHIEF, "worker", 0, False),
    (WITH_CHIEF, "worker", 1, False),
    ({}, None, None, True),
])
def test_is_chief_follows_multi_worker_rule(monkeypatch, cluster, task_type, task_id, chief):
    assert monitor_module._is_chief() is True  # no strategy: a single process is its own chief
    in_cluster(monkeypatch, cluster, task_type, task_id)
    assert monitor_module._is_chief() is chief


def test_monitor_on_non_chief_writes_nothing(monkeypatch, tmp_path):
    model = build_model()
    x, y = probe_batch()
    monitor = RNNMonitor(tmp_path / "run", x, y, every=1)
    monitor.set_model(model)
    in_cluster(monkeypatch, WORKERS, "worker", 1)
    monitor.on_train_begin()
    monitor.on_train_batch_begin(0)
    monitor.on_train_batch_end(0, {"loss": 1.0})
    monitor.on_epoch_end(0, {"loss": 1.0})
    monitor.on_train_end()
    assert monitor.probe_count == 0
    assert not (tmp_path / "run").exists()
