"""Checkpoints every N steps and at the end, and resuming from the latest one.

TensorFlow runs write `tf.train.Checkpoint`s (`TrainingCheckpoints`, which work under every strategy);
JAX and PyTorch runs write `KerasCheckpoints` (plain arrays in `.npz` files). The rest of this docstring is
about the TensorFlow ones.

A checkpoint holds the model, the optimizer (Adam moments, its update count, the loss scale) and the
step counter; the learning rate and the data position are functions of the step, so restoring those
three resumes the run exactly. `tf.train.CheckpointManager` writes each checkpoint's files first and
its `checkpoint` index last (renamed into place), so a run killed mid-save resumes from the previous
one. The resolved config is saved beside them as `config.json`.

Under `MultiWorkerMirroredStrategy` every worker must take part in a save; only the chief writes to
`output_dir`, the others to a scratch folder that is deleted afterwards.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import uuid

import keras
import numpy as np
import tensorflow as tf
from keras.backend import standardize_dtype

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"


def model_variables(model) -> dict:
    """Every variable of `model` (trainable or not, e.g. frozen BatchNorm statistics) by its path inside the
    model (without the model's own name, which Keras numbers per process: `mask2_former_1/...`).

    (A Keras 3 model handed to `tf.train.Checkpoint` directly exposes only some of its sublayers' variables.)
    """
    variables = {v.path.split("/", 1)[-1]: v for v in model.variables}
    if len(variables) != len(model.variables):
        raise ValueError("model variables do not have unique paths; name the layers uniquely")
    return variables


def check_output_dir(output_dir: str, needed_bytes: int = 0) -> None:
    """Before the first step: `output_dir` can be created and written, and has `needed_bytes` free.

    Raises OSError with one sentence naming the folder and the fix (nothing is left behind)."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".write_test_{uuid.uuid4().hex}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(
            f"train.output_dir {output_dir} cannot be written ({e.strerror or e}); "
            "choose a writable folder with --set train.output_dir=..."
        ) from None
    free = shutil.disk_usage(output_dir).free
    if free < needed_bytes:
        raise OSError(
            f"train.output_dir {output_dir} has {free / 2**20:.0f} MiB free but a run needs about "
            f"{needed_bytes / 2**20:.0f} MiB (checkpoints and final model); free space or choose another folder"
        )


def variable_bytes(variables) -> int:
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(standardize_dtype(v.dtype)).itemsize for v in variables))


def _remove(paths: list[str]) -> None:
    """Deletes files and folders (partial checkpoint writes)."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint written in `output_dir` (TensorFlow's or `KerasCheckpoints`'), or None."""
    directory = os.path.join(output_dir, CHECKPOINT_SUBDIR)
    found = [p for p in [tf.train.latest_checkpoint(directory), *_keras_checkpoints(directory)[-1:]] if p]
    return max(found, key=checkpoint_step) if found else None


class TrainingCheckpoints:
    """Saves and restores `model`, `optimizer` and `step` under `output_dir/checkpoints`.

    Args:
        output_dir: str, the run's folder. chief: bool, whether this worker owns `output_dir`.
        model, optimizer: Keras objects. step: int64 `tf.Variable`. keep: int, checkpoints kept.
        worker_id: int, names the scratch folder of a non-chief worker.
    """

    def __init__(self, output_dir: str, *, model, optimizer, step, keep: int, chief: bool = True, worker_id: int = 0):
        self.chief = chief
        self.directory = os.path.join(output_dir, CHECKPOINT_SUBDIR)
        self.write_directory = self.directory if chief else os.path.join(output_dir, f".worker_{worker_id}_scratch")
        self.step = step
        self.checkpoint = tf.train.Checkpoint(model=model_variables(model), optimizer=optimizer, step=step)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.write_directory, max_to_keep=keep, step_counter=step
        )

    def restore_latest(self) -> str | None:
        """Restores the newest checkpoint of `output_dir` (every worker reads the chief's); its path or None.

        The chief first removes what a killed write left behind (`ckpt-N_temp`, never read, not counted by
        `keep`); a complete checkpoint newer than the index is rewritten by the step that made it."""
        if self.chief:
            _remove(glob.glob(os.path.join(self.directory, "ckpt-*_temp*")))
        path = tf.train.latest_checkpoint(self.directory)
        if path is not None:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def save(self) -> str:
        """Writes a checkpoint named after the step; returns its path (the chief's).

        A failed write (full disk, lost permission) removes its partial files and raises OSError."""
        try:
            path = self.manager.save(checkpoint_number=self.step)
        except (OSError, tf.errors.OpError) as e:
            step = int(self.step.numpy())
            _remove(
                glob.glob(os.path.join(self.write_directory, f"ckpt-{step}_temp*"))
                + glob.glob(os.path.join(self.write_directory, f"ckpt-{step}.*"))
            )
            message = getattr(e, "message", None) or str(e)
            raise OSError(
                f"cannot write checkpoint {step} in {self.write_directory} ({message.strip().splitlines()[0]}); "
                "free disk space or choose another train.output_dir, then run again to resume"
            ) from None
        if not self.chief:
            shutil.rmtree(self.write_directory, ignore_errors=True)
        return path


KERAS_CHECKPOINT = re.compile(r"ckpt-(\d+)\.npz$")


def checkpoint_step(path: str) -> int:
    """The optimizer step a checkpoint (either format) was written at."""
    match = KERAS_CHECKPOINT.search(path)
    if match:
        return int(match.group(1))
    reader = tf.train.load_checkpoint(path)
    key = "step/.ATTRIBUTES/VARIABLE_VALUE"
    return int(reader.get_tensor(key)) if reader.has_tensor(key) else 0


def _keras_checkpoints(directory: str) -> list[str]:
    """The `ckpt-N.npz` files of `directory`, oldest first."""
    found = [p for p in glob.glob(os.path.join(directory, "ckpt-*.npz")) if KERAS_CHECKPOINT.search(p)]
    return sorted(found, key=checkpoint_step)


class KerasCheckpoints:
    """The checkpoints of a JAX or PyTorch run: `ckpt-N.npz` under `output_dir/checkpoints`.

    Each holds every model variable by its path (`model/...`), every optimizer variable in the optimizer's
    order (`optimizer/i`: Adam moments, update count, learning rate, loss scale) and `step`: plain arrays,
    readable on any backend. A file is written under a temporary name and renamed into place, so a run
    killed mid-save resumes from the previous one; the oldest beyond `keep` are deleted.
    """

    def __init__(self, output_dir: str, *, model, optimizer, keep: int):
        self.directory = os.path.join(output_dir, CHECKPOINT_SUBDIR)
        self.model_variables = model_variables(model)
        self.optimizer = optimizer
        self.keep = keep

    def restore_latest(self) -> tuple[str | None, int]:
        """Restores the newest checkpoint; returns (its path, its step), or (None, 0) when there is none.
        First removes what a killed write left behind (`ckpt-N.npz.<hex>.tmp`, never read)."""
        _remove(glob.glob(os.path.join(self.directory, "ckpt-*.npz.*.tmp")))
        found = _keras_checkpoints(self.directory)
        if not found:
            return None, 0
        path = found[-1]
        with np.load(path) as saved:
            for name, variable in self.model_variables.items():
                variable.assign(saved[f"model/{name}"])
            for i, variable in enumerate(self.optimizer.variables):
                variable.assign(saved[f"optimizer/{i}"])
            return path, int(saved["step"])

    def save(self, step: int) -> str:
        """Writes `ckpt-{step}.npz`; returns its path. A failed write leaves no partial file and raises OSError."""
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"ckpt-{step}.npz")
        arrays = {
            f"model/{name}": np.asarray(keras.ops.convert_to_numpy(v)) for name, v in self.model_variables.items()
        }
        arrays.update(
            {
                f"optimizer/{i}": np.asarray(keras.ops.convert_to_numpy(v))
                for i, v in enumerate(self.optimizer.variables)
            }
        )
        temporary = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temporary, "wb") as f:
                np.savez(f, step=np.int64(step), **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except OSError as e:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise OSError(
                f"cannot write checkpoint {step} in {self.directory} ({e.strerror or e}); "
                "free disk space or choose another train.output_dir, then run again to resume"
            ) from None
        for old in _keras_checkpoints(self.directory)[: -self.keep]:
            os.remove(old)
        return path
