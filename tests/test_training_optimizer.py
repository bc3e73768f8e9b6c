"""Optimizer, parameter groups, clipping and schedules against PyTorch's AdamW / clip_grad_norm_ / schedulers."""

import numpy as np
import pytest
import tensorflow as tf
import torch

from model import build_model
from tests.helpers import tiny_config
from training.optimizer import build_optimizer, clip_by_global_norm, parameter_groups
from training.schedules import WARMUP_START_FACTOR, build_schedule


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config(num_decoder_layers=1, encoder_layers=1))


def _ids(variables):
    return {id(v) for v in variables}


def test_parameter_groups_follow_the_official_rules(model):
    groups = parameter_groups(model)
    no_decay, backbone = _ids(groups["no_weight_decay"]), _ids(groups["backbone"])
    decoder, pixel_decoder = model.transformer_decoder, model.pixel_decoder
    for embedding in (decoder.query_feat, decoder.query_embed, decoder.level_embed):
        assert id(embedding) in no_decay
    assert id(pixel_decoder.level_embed) not in no_decay  # a plain nn.Parameter officially: decayed
    norms = [v for v in model.trainable_variables if v.path.endswith(("/gamma", "/beta"))]
    assert norms and all(id(v) in no_decay for v in norms)  # every LayerNorm / GroupNorm weight and bias
    assert len(no_decay) == len(norms) + 3
    assert backbone == _ids(model.backbone.trainable_variables) and backbone
    assert not backbone & no_decay  # frozen BN is not trainable; backbone convs are decayed
    biases = [v for v in model.trainable_variables if v.path.endswith("/bias")]
    assert biases and not _ids(biases) & no_decay  # detectron2 decays biases (WEIGHT_DECAY_BIAS = WEIGHT_DECAY)


def test_two_updates_equal_torch_adamw_with_param_groups_and_full_model_clipping(model):
    config = tiny_config(num_decoder_layers=1, encoder_layers=1)
    config.train.learning_rate = 1e-3  # large enough that lr and decay differences show
    config.train.mixed_precision = "float32"  # (mixed_float16 wraps it in a LossScaleOptimizer)
    config.train.clip_grad_norm = 0.01
    variables = model.trainable_variables
    initial = [v.numpy().copy() for v in variables]
    optimizer = build_optimizer(config.train, model, learning_rate=config.train.learning_rate)
    groups = parameter_groups(model)
    no_decay, backbone = _ids(groups["no_weight_decay"]), _ids(groups["backbone"])

    params = [torch.nn.Parameter(torch.tensor(a, dtype=torch.float64)) for a in initial]
    torch_groups = {}
    for v, p in zip(variables, params, strict=True):
        key = (id(v) in backbone, id(v) in no_decay)
        torch_groups.setdefault(key, []).append(p)
    reference = torch.optim.AdamW(
        [
            {
                "params": ps,
                "lr": 1e-3 * (0.1 if in_backbone else 1.0),
                "weight_decay": 0.0 if undecayed else 0.05,
            }
            for (in_backbone, undecayed), ps in torch_groups.items()
        ],
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    rng = np.random.default_rng(0)
    for scale in (1.0, 1e-4):  # first clipped (norm >> 0.01), then not
        grads = [rng.normal(0, scale, a.shape).astype(np.float32) for a in initial]
        optimizer.apply([tf.constant(g) for g in grads], variables)
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.tensor(g, dtype=torch.float64)
        torch.nn.utils.clip_grad_norm_(params, 0.01)
        reference.step()
    for v, p in zip(variables, params, strict=True):
        np.testing.assert_allclose(v.numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=v.path)


def test_clip_by_global_norm_equals_torch():
    rng = np.random.default_rng(1)
    grads = [rng.normal(0, 1, s).astype(np.float32) for s in ((3, 4), (5,), (2, 2, 2))]
    clipped, norm = clip_by_global_norm([tf.constant(g) for g in grads], 0.5)
    tensors = [torch.tensor(g, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(tensors, grads, strict=True):
        t.grad = torch.tensor(g, dtype=torch.float64)
    torch_norm = torch.nn.utils.clip_grad_norm_(tensors, 0.5)
    np.testing.assert_allclose(float(norm), float(torch_norm), rtol=1e-6)
    for c, t in zip(clipped, tensors, strict=True):
        np.testing.assert_allclose(c.numpy(), t.grad.numpy(), rtol=1e-6)


def _torch_lrs(make_scheduler, steps, base_lr):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


@pytest.mark.parametrize("kind", ["step", "poly", "cosine"])
@pytest.mark.parametrize("warmup_steps", [0, 4])
def test_schedules_equal_torch_schedulers(kind, warmup_steps):
    config = tiny_config()
    t = config.train
    t.lr_schedule, t.max_steps, t.lr_decay_steps, t.warmup_steps = kind, 20, (8, 13), warmup_steps
    schedule = build_schedule(t)
    lr = torch.optim.lr_scheduler
    main = {
        "step": lambda o: lr.MultiStepLR(o, milestones=[8, 13], gamma=0.1),
        "poly": lambda o: lr.PolynomialLR(o, total_iters=20, power=0.9),
        "cosine": lambda o: lr.CosineAnnealingLR(o, T_max=20, eta_min=0.0),
    }[kind]
    if warmup_steps:
        make = lambda o: lr.ChainedScheduler(  # noqa: E731
            [lr.LinearLR(o, start_factor=WARMUP_START_FACTOR, total_iters=warmup_steps), main(o)]
        )
    else:
        make = main
    expected = _torch_lrs(make, 20, t.learning_rate)
    ours = np.array([float(schedule(s)) for s in range(20)])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-12)
