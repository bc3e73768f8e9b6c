"""Distribution: MirroredStrategy over 2 logical CPUs equals one device; 2 local multi-worker processes agree.

Both run in subprocesses (logical devices and TF_CONFIG must be set before TensorFlow starts).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic_coco import training_config, write_synthetic_tfrecords

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}

MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from losses import build_criterion
    from model import build_model
    from tests.test_training_step import _batch, _config
    from training.optimizer import build_optimizer
    from training.schedules import build_schedule
    from training.train_step import TrainStep

    config, batch = _config(), _batch(4)
    initial = build_model(config).get_weights()

    def one_step(strategy, accumulation_steps):
        replicas = strategy.num_replicas_in_sync
        per_replica = 4 // replicas
        with strategy.scope():
            model = build_model(config)
            model.set_weights(initial)
            step = tf.Variable(0, dtype=tf.int64)
            schedule = build_schedule(config.train)
            optimizer = build_optimizer(config.train, model, learning_rate=lambda: schedule(step))
        step_fn = TrainStep(model, build_criterion(config), optimizer, strategy, step,
                            accumulation_steps=accumulation_steps, replica_batch_size=per_replica, seed=5,
                            learning_rate=schedule)
        shard = lambda ctx: {k: v[ctx.replica_id_in_sync_group * per_replica:][:per_replica] for k, v in batch.items()}
        results = step_fn(strategy.experimental_distribute_values_from_function(shard))
        copies = [[c.numpy() for c in strategy.experimental_local_results(v.value)] for v in model.trainable_variables]
        in_sync = all(np.array_equal(c[0], other) for c in copies for other in c[1:])
        delta = [c[0] - initial[i] for c, i in zip(copies, trainable_index)]
        return {k: float(v) for k, v in results.items()}, delta, in_sync

    probe = build_model(config)
    trainable_ids = {id(v) for v in probe.trainable_variables}
    trainable_index = [i for i, v in enumerate(probe.weights) if id(v) in trainable_ids]
    reference = one_step(tf.distribute.get_strategy(), 1)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for name, k in (("mirrored", 1), ("mirrored_accumulated", 2)):
        losses, delta, in_sync = one_step(mirrored, k)
        num = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(delta, reference[1])))
        den = np.sqrt(sum(np.sum(a ** 2) for a in reference[1]))
        out[name] = {"replicas_in_sync": in_sync, "update_relative_error": float(num / den),
                     "losses": losses, "reference_losses": reference[0]}
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_mirrored_two_cpus_equal_one_device_on_the_same_global_batch():
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT ") :])
    for name, r in result.items():
        assert r["replicas_in_sync"], name
        assert r["update_relative_error"] < 1e-4, (name, r["update_relative_error"])
        for key in ("loss_total", "loss_ce", "loss_mask", "loss_dice", "grad_norm"):
            np.testing.assert_allclose(r["losses"][key], r["reference_losses"][key], rtol=1e-5, err_msg=(name, key))
        assert r["losses"]["applied"] == 1.0


WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from config import Mask2FormerConfig
    from training.loop import train
    config = Mask2FormerConfig.load(sys.argv[1])
    result = train(config)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    np.savez(os.path.join(sys.argv[2], f"weights_{index}.npz"), *[v.numpy() for v in result.model.variables])
    print("RESULT " + json.dumps({"status": result.status, "step": result.step,
                                  "losses": [h["loss_total"] for h in result.history]}))
    """
)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_local_workers_train_and_end_with_identical_weights(tmp_path):
    pattern = write_synthetic_tfrecords(tmp_path / "data", num_images=4, num_shards=2)
    config = training_config(pattern, str(tmp_path / "run"), max_steps=3, checkpoint_every=3)
    config.train.distribution = "multi_worker"
    config.save(str(tmp_path / "config.json"))
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER_SCRIPT, str(tmp_path / "config.json"), str(tmp_path)],
                cwd=ROOT,
                env={**ENV, "TF_CONFIG": json.dumps(tf_config)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    results = []
    for p, output in zip(processes, outputs, strict=True):
        assert p.returncode == 0, output[-4000:]
        results.append(json.loads([x for x in output.splitlines() if x.startswith("RESULT ")][0][len("RESULT ") :]))
    assert [r["step"] for r in results] == [3, 3] and all(r["status"] == "finished" for r in results)
    np.testing.assert_allclose(results[0]["losses"], results[1]["losses"], rtol=1e-6)  # the global batch's loss
    weights = [np.load(tmp_path / f"weights_{i}.npz") for i in range(2)]
    assert len(weights[0].files) == len(weights[1].files) > 100
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
    assert (tmp_path / "run" / "checkpoints" / "ckpt-3.index").exists()  # written by the chief
    assert not list((tmp_path / "run").glob(".worker_*"))  # the other worker's scratch copy is gone
