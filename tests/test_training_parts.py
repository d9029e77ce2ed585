"""Training building blocks: schedules, loss, optimizer, RNG states, distributed helpers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from gmrseg.errors import InputError
from gmrseg.training.distributed import DistributedContext, all_reduce_mean, all_reduce_sum, init_distributed
from gmrseg.training.losses import SegmentationLoss
from gmrseg.training.optimizer import build_optimizer
from gmrseg.training.progress import plot_progress, progress_figure, write_metrics_csv
from gmrseg.training.rng import capture_rng_state, restore_rng_state
from gmrseg.training.schedule import build_scheduler, lr_factor


def test_poly_schedule_values():
    assert lr_factor(0, 100, name="poly") == 1.0
    assert lr_factor(50, 100, name="poly", power=1.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, name="poly") == 0.0


def test_cosine_schedule_values():
    assert lr_factor(0, 100, name="cosine") == 1.0
    assert lr_factor(50, 100, name="cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, name="cosine", min_factor=0.1) == pytest.approx(0.1)


def test_warmup_rises_linearly():
    factors = [lr_factor(step, 100, name="cosine", warmup_steps=10, warmup_start_factor=0.1) for step in range(11)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[5] == pytest.approx(0.55)
    assert factors[10] == pytest.approx(1.0)
    assert all(later > earlier for earlier, later in zip(factors, factors[1:]))


def test_scheduler_past_end_stays_final():
    assert lr_factor(150, 100, name="poly") == 0.0


def test_scheduler_steps_optimizer():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, name="sgd", lr=0.1, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, name="poly", total_steps=4, power=1.0)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.075, 0.05, 0.025])


def test_optimizer_choices():
    model = torch.nn.Linear(2, 2)
    assert isinstance(build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.01), torch.optim.AdamW)
    sgd = build_optimizer(model, name="sgd", lr=1e-2, weight_decay=0.0, momentum=0.9)
    assert sgd.param_groups[0]["nesterov"] is True
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer(model, name="adam", lr=1e-3, weight_decay=0.0)


def test_loss_perfect_prediction_is_small():
    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    label[..., 2:6, 2:6, 2:6] = 1
    logits = torch.cat([(label == 0).float(), (label == 1).float()], dim=1) * 20.0
    assert SegmentationLoss()(logits, label).item() < 0.05


def test_deep_supervision_sums_weighted_levels():
    torch.manual_seed(0)
    label = (torch.rand(1, 1, 8, 8, 8) > 0.5).long()
    full, half = torch.randn(1, 2, 8, 8, 8), torch.randn(1, 2, 4, 4, 4)
    single = SegmentationLoss()
    expected = single(full, label) + 0.5 * single(half, label[..., ::2, ::2, ::2])
    assert SegmentationLoss()([full, half], label).item() == pytest.approx(expected.item(), rel=0.05)
    weighted = SegmentationLoss(weights=[1.0, 0.0])([full, half], label)
    assert weighted.item() == pytest.approx(single(full, label).item(), rel=1e-5)


def test_deep_supervision_too_few_weights():
    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    outputs = [torch.randn(1, 2, 8, 8, 8), torch.randn(1, 2, 4, 4, 4)]
    with pytest.raises(InputError, match="loss.deep_supervision_weights"):
        SegmentationLoss(weights=[1.0])(outputs, label)


def test_rng_state_round_trip(tmp_path):
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    restore_rng_state(torch.load(path, weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed("cpu")
    assert context == DistributedContext(device=torch.device("cpu"))
    assert context.is_main
    assert not context.is_distributed
    assert all_reduce_mean(2.5, context) == 2.5
    assert all_reduce_sum([1.0, 2.0], context) == [1.0, 2.0]


def test_invalid_device_is_input_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(InputError, match="tpu"):
        init_distributed("tpu")


def test_torchrun_rejects_fixed_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(InputError, match="LOCAL_RANK"):
        init_distributed("cuda:1")


def test_metrics_and_plot_files(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 1.5, "lr": 0.01, "seconds": 2.0},
        {"epoch": 2, "train_loss": 1.2, "val_loss": 1.1, "dice_a": 0.5, "dice_b": math.nan, "dice_mean": 0.5,
         "lr": 0.005, "seconds": 2.5},
    ]
    write_metrics_csv(tmp_path / "metrics.csv", history, ["a", "b"])
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,dice_a,dice_b,dice_mean,lr,seconds"
    assert lines[1] == "1,1.5,,,,,0.01,2"
    assert lines[2] == "2,1.2,1.1,0.5,,0.5,0.005,2.5"
    plot_progress(tmp_path / "progress.png", history, ["a", "b"])
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_progress_figure_one_epoch_whole_ticks():
    history = [{"epoch": 1, "train_loss": 1.5, "val_loss": 1.4, "dice_a": 0.3, "dice_mean": 0.3, "lr": 0.01}]

    figure = progress_figure(history, ["a"])
    figure.canvas.draw()

    for axes in figure.axes:
        ticks = axes.get_xticks()
        assert len(ticks) > 0
        assert all(float(tick).is_integer() for tick in ticks)
    assert figure.axes[0].lines[0].get_marker() == "."
