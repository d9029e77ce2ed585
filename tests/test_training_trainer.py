"""Training loop on tiny synthetic data: resume, checkpoints, interrupts, records."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gmrseg.errors import InputError
from gmrseg.training import checkpoint as checkpoint_module
from gmrseg.training import trainer as trainer_module
from gmrseg.training.checkpoint import load_checkpoint
from gmrseg.training.config import config_from_dict
from gmrseg.training.rng import seed_everything
from gmrseg.training.schedule import lr_factor
from gmrseg.training.trainer import Trainer
from training_helpers import CLASS_NAMES, TinyNet, build_tiny_datasets, write_tiny_dataset

def make_config(**training):
    values = {
        "data": {"patch_size": [16, 16, 16], "batch_size": 2, "num_workers": 0},
        "optim": {"name": "adamw", "lr": 0.01},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "training": {"epochs": 2, "iterations_per_epoch": 2, "amp": "none", "seed": 3, **training},
        "validation": {"interval": 1},
        "augmentation": {"rotation": False},
    }
    return config_from_dict(values)


_DATASETS = {}


def tiny_datasets(rotation: bool = False):
    """Build the tiny datasets once per test session (they are read-only)."""
    if rotation not in _DATASETS:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="gmrseg_training_"))
        write_tiny_dataset(root / "dataset")
        _DATASETS[rotation] = build_tiny_datasets(root / "dataset", root / "cache", rotation=rotation,
                                                  probability=1.0 if rotation else 0.2)
    return _DATASETS[rotation]


def make_trainer(fold_dir, config=None, deep_supervision=True, rotation=False, val=True) -> Trainer:
    config = config or make_config()
    seed_everything(config.training.seed)
    network = TinyNet(deep_supervision=deep_supervision)
    train_dataset, val_dataset = tiny_datasets(rotation)
    return Trainer(config, network, train_dataset, val_dataset if val else [], CLASS_NAMES, fold_dir=fold_dir,
                   quiet=True)


def test_fit_writes_fold_files(tmp_path):
    summary = make_trainer(tmp_path).fit()
    assert summary["epochs"] == 2
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.csv", "train.log", "progress.png"):
        assert (tmp_path / name).is_file(), name
    assert summary["best_epoch"] in (1, 2)


def test_metrics_csv_columns(tmp_path):
    make_trainer(tmp_path).fit()
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "dice_head", "dice_tail", "dice_mean", "lr",
                             "seconds"]
    assert 0.0 <= float(rows[1]["dice_mean"]) <= 1.0
    assert float(rows[0]["train_loss"]) > 0


def test_train_log_has_epoch_lines(tmp_path):
    make_trainer(tmp_path).fit()
    text = (tmp_path / "train.log").read_text()
    assert "epoch 1/2: train loss" in text
    assert "Dice mean" in text


def test_checkpoint_contents_weights_only(tmp_path):
    make_trainer(tmp_path).fit()
    checkpoint = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "grad_scaler", "epoch", "best_metric", "rng", "history"):
        assert key in checkpoint, key
    assert checkpoint["epoch"] == 2
    assert set(checkpoint["rng"]) >= {"torch", "numpy", "python", "cuda"}


def test_validation_interval_leaves_gaps(tmp_path):
    config = make_config(epochs=3)
    config.validation.interval = 2
    make_trainer(tmp_path, config).fit()
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["dice_mean"] == ""
    assert rows[1]["dice_mean"] != ""
    assert rows[2]["dice_mean"] != ""  # the last epoch is always validated


def test_resume_matches_uninterrupted(tmp_path):
    straight = make_trainer(tmp_path / "straight")
    straight.fit()

    first = make_trainer(tmp_path / "split", make_config(epochs=2))
    first.config.training.epochs = 2

    def stop_after_first(trainer):
        if trainer.epoch == 1:
            raise _StopHere

    with pytest.raises(_StopHere):
        first.fit(after_epoch=stop_after_first)
    assert load_checkpoint(tmp_path / "split" / "checkpoint_last.pt")["epoch"] == 1

    # A fresh process-like start: other seeds and weights, then resume.
    torch.manual_seed(999)
    resumed = make_trainer(tmp_path / "split")
    resumed.fit(resume=True)

    assert resumed.epoch == 2
    for name, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name


class _StopHere(Exception):
    pass


def _fixed_plan(monkeypatch, elapsed=12.0, train_seconds=10.0, validation_seconds=2.0):
    """Make the time-limit planning see fixed timings instead of this machine's."""
    original = Trainer._plan_epochs

    def plan(self, *measured):
        original(self, elapsed, train_seconds, validation_seconds)

    monkeypatch.setattr(Trainer, "_plan_epochs", plan)


def test_time_limit_plan_shortens_schedule(tmp_path):
    config = make_config(epochs=10, time_limit_minutes=1.0)
    trainer = make_trainer(tmp_path, config)
    trainer.epoch = 1
    trainer.optimizer.step()  # no gradients: changes nothing, but orders the scheduler steps
    for _ in range(3):
        trainer.scheduler.step()

    # 60 s - 12 s elapsed - 2 s for the last validation leaves 46 s: three more epochs of 12 s.
    trainer._plan_epochs(12.0, 10.0, 2.0)

    assert trainer.planned_epochs == 4
    assert trainer.epochs == 4
    assert trainer.total_steps == 8
    assert config.training.epochs == 10
    expected = 0.01 * lr_factor(3, 8, name="cosine", warmup_steps=2)
    assert expected < 0.01 * lr_factor(3, 20, name="cosine", warmup_steps=2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(expected)


def test_time_limit_replan_raises_only_early(tmp_path):
    config = make_config(epochs=10, time_limit_minutes=1.0)
    trainer = make_trainer(tmp_path, config)
    trainer.epoch = 1
    trainer._plan_epochs(12.0, 10.0, 2.0)
    assert trainer.epochs == 4

    # One more epoch would fit: too small a change to raise the plan.
    trainer._plan_epochs(12.0, 10.0, 1.0)
    assert trainer.epochs == 4

    # Faster epochs in the first half: 60 - 12 - 1 s leaves 47 s for seven more epochs of
    # 5 s with a 1-s validation each.
    trainer._plan_epochs(12.0, 5.0, 1.0)
    assert trainer.epochs == 8

    # Faster still: fifteen more would fit, capped at training.epochs.
    trainer._plan_epochs(12.0, 2.0, 1.0)
    assert trainer.epochs == 10
    assert trainer.total_steps == 20

    # In the second half of the plan, faster epochs change nothing, slower ones still lower it.
    trainer.epoch = 6
    trainer._plan_epochs(30.0, 1.0, 0.5)
    assert trainer.epochs == 10
    trainer._plan_epochs(50.0, 5.0, 1.0)
    assert trainer.epochs == 7
    assert config.training.epochs == 10


def test_time_limit_keeps_epochs_that_fit(tmp_path):
    config = make_config(epochs=3, time_limit_minutes=60.0)
    config.validation.interval = 5
    summary = make_trainer(tmp_path, config).fit()

    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert summary["epochs"] == 3
    assert rows[0]["dice_mean"] != ""  # validated to measure the validation time
    assert rows[1]["dice_mean"] == ""
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["planned_epochs"] == 3
    assert "all 3 epochs fit" in (tmp_path / "train.log").read_text()


def test_time_limit_stops_after_first_epoch(tmp_path):
    summary = make_trainer(tmp_path, make_config(epochs=5, time_limit_minutes=1e-6)).fit()

    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert summary["epochs"] == 1
    assert checkpoint["epoch"] == 1
    assert checkpoint["planned_epochs"] == 1
    assert "training 1 of 5 epochs" in (tmp_path / "train.log").read_text()


def test_time_limit_resume_keeps_plan(tmp_path, monkeypatch):
    _fixed_plan(monkeypatch)
    config = make_config(epochs=10, time_limit_minutes=1.0)
    straight = make_trainer(tmp_path / "straight", config)
    straight.fit()

    def stop_after_second(trainer):
        if trainer.epoch == 2:
            raise _StopHere

    with pytest.raises(_StopHere):
        make_trainer(tmp_path / "split", make_config(epochs=10, time_limit_minutes=1.0)).fit(
            after_epoch=stop_after_second)
    torch.manual_seed(999)
    resumed = make_trainer(tmp_path / "split", make_config(epochs=10, time_limit_minutes=1.0))
    resumed.fit(resume=True)

    assert straight.epoch == 4
    assert resumed.epochs == 4
    assert resumed.epoch == 4
    for name, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name


def test_time_limit_resume_with_new_limit_replans(tmp_path, monkeypatch):
    _fixed_plan(monkeypatch)
    make_trainer(tmp_path, make_config(epochs=10, time_limit_minutes=1.0)).fit()
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["planned_epochs"] == 4

    # Five minutes from epoch 4: 300 s - 12 s - 2 s leaves room for 23 epochs of 12 s, capped at 10.
    resumed = make_trainer(tmp_path, make_config(epochs=10, time_limit_minutes=5.0))
    resumed.fit(resume=True)

    assert resumed.planned_epochs == 10
    assert resumed.epoch == 10


def test_time_limit_replans_when_epochs_slow_down(tmp_path, monkeypatch):
    # With these timings four epochs fit in the minute after epoch 1. After epoch 2 the
    # epochs have slowed down, so only one more fits.
    timings = iter([(12.0, 10.0, 2.0), (40.0, 15.0, 2.0), (50.0, 15.0, 2.0)])
    original = Trainer._plan_epochs
    monkeypatch.setattr(Trainer, "_plan_epochs", lambda self, *measured: original(self, *next(timings)))

    trainer = make_trainer(tmp_path, make_config(epochs=10, time_limit_minutes=1.0))
    summary = trainer.fit()

    log = (tmp_path / "train.log").read_text()
    assert summary["epochs"] == 3
    assert trainer.total_steps == 6
    assert "training 4 of 10 epochs" in log
    assert "lowered to 3 epochs from 4" in log


def test_time_limit_slow_first_epoch(tmp_path, monkeypatch):
    # A fake clock: the first epoch takes 8 s (start-up, or another job on the machine),
    # later ones 4 s, each validation 1 s.
    clock = [0.0]
    original_train, original_validate = Trainer.train_epoch, Trainer.validate

    def train_epoch(self):
        clock[0] += 8.0 if self.epoch == 0 else 4.0
        return original_train(self)

    def validate(self):
        clock[0] += 1.0
        return original_validate(self)

    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    monkeypatch.setattr(Trainer, "validate", validate)
    config = make_config(epochs=20, time_limit_minutes=1.0)
    config.validation.interval = 5

    summary = make_trainer(tmp_path, config).fit()

    # After epoch 1: 60 s - 9 s - 1 s for the last validation leaves 50 s, six epochs of 8.2 s.
    # After epoch 2, timed without the first: 60 - 13 - 1 leaves 46 s, ten epochs of 4.2 s.
    log = (tmp_path / "train.log").read_text()
    assert "training 7 of 20 epochs" in log
    assert "raised to 12 epochs from 7" in log
    assert summary["epochs"] == 12


def test_time_limit_must_be_positive():
    with pytest.raises(InputError, match="training.time_limit_minutes"):
        make_config(time_limit_minutes=0)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bfloat16_only_where_native(tmp_path, monkeypatch, caplog, native):
    monkeypatch.setattr(trainer_module, "cpu_supports_bfloat16", lambda: native)
    with caplog.at_level("INFO"):
        trainer = make_trainer(tmp_path, make_config(epochs=1, amp="bfloat16"))
    summary = trainer.fit()

    assert trainer.amp_dtype == (torch.bfloat16 if native else None)
    assert ("no native bfloat16" in caplog.text) == (not native)
    assert summary["epochs"] == 1
    assert 0.0 <= summary["last"]["dice_mean"] <= 1.0


def test_cpu_ignores_float16(tmp_path):
    trainer = make_trainer(tmp_path, make_config(epochs=1, amp="float16"))

    assert trainer.amp_dtype is None
    assert not trainer.scaler.is_enabled()


def test_resume_without_checkpoint_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint_last.pt"):
        make_trainer(tmp_path).fit(resume=True)


def test_resume_with_other_classes_fails(tmp_path):
    make_trainer(tmp_path).fit()
    train_dataset, _ = tiny_datasets()
    trainer = Trainer(make_config(), TinyNet(), train_dataset, [], ["background", "a", "b"], fold_dir=tmp_path,
                      quiet=True)
    with pytest.raises(InputError, match="classes"):
        trainer.fit(resume=True)


def test_keyboard_interrupt_saves_last(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, make_config(epochs=3))
    calls = {"count": 0}
    original = Trainer.train_step

    def interrupt_on_fourth(self, batch):
        calls["count"] += 1
        if calls["count"] == 4:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupt_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()

    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert checkpoint["epoch"] == 1
    # The saved weights are those at the interruption, one step after epoch 1.
    for name, value in trainer.network.state_dict().items():
        assert torch.equal(value, checkpoint["model"][name]), name
    assert "Interrupted during epoch 2" in (tmp_path / "train.log").read_text()


def test_out_of_memory_names_settings(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path)

    def out_of_memory(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train_step", out_of_memory)
    with pytest.raises(InputError) as error:
        trainer.fit()
    message = str(error.value)
    assert "data.batch_size" in message
    assert "data.patch_size" in message


def test_nonfinite_loss_raises(tmp_path):
    trainer = make_trainer(tmp_path)
    with torch.no_grad():
        trainer.network.encode.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="optim.lr") as error:
        trainer.fit()
    assert "in float32" in str(error.value)


def test_nonfinite_gradient_skips_step(tmp_path, caplog):
    trainer = make_trainer(tmp_path)
    calls = []

    def spoil_first(gradient):
        calls.append(1)
        return gradient * float("nan") if len(calls) == 1 else gradient

    trainer.network.encode.weight.register_hook(spoil_first)
    with caplog.at_level("WARNING", logger="gmrseg.training.trainer"):
        summary = trainer.fit()

    assert summary["epochs"] == 2
    assert len(calls) == 4
    assert "Skipped an optimizer step at epoch 1: gradient norm nan" in caplog.text
    assert "not finite in encode.weight" in caplog.text
    assert all(torch.isfinite(parameter).all() for parameter in trainer.network.parameters())
    assert trainer.skipped_steps == 0


def test_nonfinite_gradients_in_a_row_raise(tmp_path):
    trainer = make_trainer(tmp_path, config=make_config(epochs=3))
    trainer.network.encode.weight.register_hook(lambda gradient: gradient * float("nan"))

    with pytest.raises(FloatingPointError, match=r"5 steps in a row at epoch 3 in float32") as error:
        trainer.fit()
    assert "not finite in encode.weight" in str(error.value)
    assert "optim.lr" in str(error.value)


def test_overflowing_gradient_norm_skips_step(tmp_path, caplog):
    trainer = make_trainer(tmp_path)
    calls = []

    def inflate_first(gradient):
        # Finite values whose squares overflow float32, so only the norm is infinite.
        calls.append(1)
        return torch.full_like(gradient, 1e30) if len(calls) == 1 else gradient

    trainer.network.encode.weight.register_hook(inflate_first)
    with caplog.at_level("WARNING", logger="gmrseg.training.trainer"):
        trainer.fit()

    assert "gradient norm inf" in caplog.text
    assert "largest in encode.weight (1e+30)" in caplog.text
    assert all(torch.isfinite(parameter).all() for parameter in trainer.network.parameters())


def test_without_validation_cases(tmp_path):
    trainer = make_trainer(tmp_path, val=False)
    summary = trainer.fit()
    assert summary["best_epoch"] is None
    assert (tmp_path / "checkpoint_last.pt").is_file()
    assert not (tmp_path / "checkpoint_best.pt").exists()


def test_sgd_and_poly_schedule(tmp_path):
    config = make_config()
    config.optim.name = "sgd"
    config.schedule.name = "poly"
    trainer = make_trainer(tmp_path, config, deep_supervision=False)
    trainer.fit()
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.optimizer.param_groups[0]["nesterov"] is True


def test_rotation_augmentation_runs(tmp_path):
    config = make_config(epochs=1)
    trainer = make_trainer(tmp_path, config, rotation=True)
    assert trainer.fit()["epochs"] == 1


def test_same_patches_whatever_the_workers(tmp_path):
    config = make_config()
    loader_batches = []
    for workers in (0, 2):
        config.data.num_workers = workers
        trainer = make_trainer(tmp_path / str(workers), config)
        loader_batches.append([batch["image"] for batch in trainer._loader()])
    for single, parallel in zip(*loader_batches):
        assert torch.equal(single, parallel)


def test_epochs_draw_different_patches(tmp_path):
    trainer = make_trainer(tmp_path)
    first = next(iter(trainer._loader()))["image"]
    trainer.epoch = 1
    second = next(iter(trainer._loader()))["image"]
    assert not torch.equal(first, second)


_KILL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from gmrseg.training import checkpoint
from test_training_trainer import make_config, make_trainer

marker = Path({marker!r})
writes = {{"count": 0}}

def slow_write(temporary):
    writes["count"] += 1
    if writes["count"] == 3:  # epoch 1 writes last and best; the third write is epoch 2's last
        marker.write_text(str(temporary))
        time.sleep(60)

checkpoint._before_rename = slow_write
make_trainer(Path({fold!r}), make_config(epochs=3)).fit()
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_resumes(tmp_path):
    fold_dir = tmp_path / "fold_0"
    marker = tmp_path / "writing"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), marker=str(marker), fold=str(fold_dir))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(f"training process ended early: {process.stdout.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the checkpoint write was not reached within 120 s")
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    temporary = Path(marker.read_text())
    assert temporary.is_file()  # the killed write left its temporary file ...
    assert load_checkpoint(fold_dir / "checkpoint_last.pt")["epoch"] == 1  # ... and the old checkpoint intact

    resumed = make_trainer(fold_dir, make_config(epochs=3))
    resumed.fit(resume=True)
    assert resumed.epoch == 3
    assert not temporary.exists()
    assert load_checkpoint(fold_dir / "checkpoint_last.pt")["epoch"] == 3


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    """In-process counterpart of the SIGKILL test: the write fails before its rename."""
    writes = {"count": 0}

    def fail_third_write(temporary):
        writes["count"] += 1
        if writes["count"] == 3:  # epoch 1 writes last and best; the third write is epoch 2's last
            raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "_before_rename", fail_third_write)
    with pytest.raises(OSError, match="disk full"):
        make_trainer(tmp_path, make_config(epochs=3)).fit()
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["epoch"] == 1
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp.pt")]

    monkeypatch.setattr(checkpoint_module, "_before_rename", None)
    resumed = make_trainer(tmp_path, make_config(epochs=3))
    resumed.fit(resume=True)
    assert resumed.epoch == 3


def test_corrupt_checkpoint_message(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        load_checkpoint(path)


def test_checkpoint_hook_reset():
    assert checkpoint_module._before_rename is None
