"""The training loop of one fold: epochs, validation, checkpoints and records.

``Trainer`` receives datasets and a built network. Dataset folders, plans and
run files are handled by ``gmrseg.training.run``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gmrseg.errors import InputError
from gmrseg.training.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from gmrseg.training.config import Config, config_to_dict
from gmrseg.training.distributed import DistributedContext, all_reduce_mean, all_reduce_sum, barrier
from gmrseg.training.logs import fold_logging
from gmrseg.training.losses import build_loss
from gmrseg.training.optimizer import build_optimizer
from gmrseg.training.patches import SeededPatchDataset
from gmrseg.training.progress import plot_progress, write_metrics_csv
from gmrseg.training.rng import capture_rng_state, restore_rng_state
from gmrseg.training.schedule import build_scheduler

__all__ = ["CHECKPOINT_FORMAT", "Trainer"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# Optimizer steps skipped in a row for non-finite gradients before training stops.
MAX_SKIPPED_STEPS = 5


def cpu_supports_bfloat16() -> bool:
    """Return whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX).

    Elsewhere bfloat16 is converted in software and usually runs slower than float32.
    """
    # NOTE: a private oneDNN query of PyTorch; a release without it counts as no support.
    query = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(query()) if query is not None else False
    except RuntimeError:
        return False


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype of ``training.amp`` on ``device``, or None for float32."""
    if device.type == "cuda":
        return _AMP_DTYPES.get(amp)
    if device.type == "cpu" and amp == "bfloat16":
        if cpu_supports_bfloat16():
            return torch.bfloat16
        logger.info("training.amp bfloat16: this CPU has no native bfloat16, so training runs in float32")
    return None


def _full_resolution(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Return the full-resolution logits of a network output (deep supervision returns a list)."""
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


class Trainer:
    """Train one fold and keep its checkpoints, metrics and curves.

    Args:
        config: resolved training config.
        network: built network (on any device; it is moved to ``context.device``).
        train_dataset: one item per training case. Each access returns a new
            random patch ``{"image" (C, X, Y, Z) float, "label" (1, X, Y, Z)
            int}`` with labels in network classes. Its MONAI ``transform``,
            augmentation included, is reseeded per patch (see
            ``SeededPatchDataset`` and ``gmrseg.data.transforms.build_datasets``).
        val_dataset: whole preprocessed cases of the same form (may be empty).
        class_names: names of the network classes, background first.
        fold_dir: folder for checkpoints, metrics.csv, train.log and
            progress.png; ``None`` writes nothing (for tests).
        context: distributed context (single process by default).
        quiet: no progress bar and no epoch summaries on the terminal.
        network_info: ``{"name", "kwargs"}`` stored in checkpoints.
        window_margin: zero margin in voxels per axis added around each validation volume before the
            sliding windows (as the predictor does after field-of-view training); None adds none.
    """

    def __init__(
        self,
        config: Config,
        network: nn.Module,
        train_dataset: Dataset,
        val_dataset: Sequence[dict[str, Any]],
        class_names: list[str],
        *,
        fold_dir: Path | None,
        context: DistributedContext | None = None,
        quiet: bool = False,
        network_info: dict[str, Any] | None = None,
        window_margin: Sequence[int] | None = None,
    ) -> None:
        if len(train_dataset) == 0:
            raise InputError("no training cases in this fold")
        if len(class_names) < 2:
            raise InputError(f"need background and at least one foreground class, got {class_names}")

        self.config = config
        self.context = context or DistributedContext()
        self.device = self.context.device
        self.fold_dir = Path(fold_dir) if fold_dir is not None else None
        self.class_names = list(class_names)
        self.foreground_names = self.class_names[1:]
        self.quiet = quiet
        self.network_info = network_info or {}
        self.val_cases = val_dataset
        self.window_margin = [int(size) for size in window_margin] if window_margin else []

        self.network = network.to(self.device)
        self.model: nn.Module = self.network
        if self.context.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.network, device_ids=device_ids)

        # Numerics: autocast on CUDA, and bfloat16 on CPUs that compute it natively;
        # float16 needs a gradient scaler.
        self.amp_dtype = _amp_dtype(config.training.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.skipped_steps = 0
        if config.training.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.training.deterministic

        training = config.training
        # The epoch count of this run: training.epochs, or fewer once a time limit has been
        # planned (see _plan_epochs). The config itself is never changed.
        self.epochs = training.epochs
        self.planned_epochs: int | None = None
        self.total_steps = self.epochs * training.iterations_per_epoch
        self.optimizer = build_optimizer(self.network, name=config.optim.name, lr=config.optim.lr,
                                         weight_decay=config.optim.weight_decay, momentum=config.optim.momentum,
                                         betas=config.optim.betas)
        self.scheduler = self._build_scheduler()
        self.loss_function = build_loss(config.loss.dice_weight, config.loss.ce_weight, config.loss.batch_dice,
                                        config.loss.deep_supervision_weights)

        # Patch sampling: each process draws its own patches, seeded by its rank.
        self.patches = SeededPatchDataset(train_dataset, training.iterations_per_epoch * config.data.batch_size,
                                          seed=training.seed, rank=self.context.rank)

        self.epoch = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.history: list[dict[str, Any]] = []
        self._write = self.context.is_main and self.fold_dir is not None

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        schedule = self.config.schedule
        return build_scheduler(
            self.optimizer, name=schedule.name, total_steps=self.total_steps,
            warmup_steps=schedule.warmup_epochs * self.config.training.iterations_per_epoch,
            warmup_start_factor=schedule.warmup_start_factor, power=schedule.power, min_lr=schedule.min_lr,
        )

    def _set_epochs(self, epochs: int) -> None:
        """Shorten or lengthen the run to ``epochs`` and end the learning-rate schedule there.

        The scheduler keeps its step count, and the current learning rate is recomputed
        on the new curve.
        """
        self.epochs = epochs
        self.total_steps = epochs * self.config.training.iterations_per_epoch
        state = self.scheduler.state_dict()
        self.scheduler = self._build_scheduler()
        self.scheduler.load_state_dict(state)
        step = self.scheduler.last_epoch
        for group, base_lr, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                          self.scheduler.lr_lambdas):
            group["lr"] = base_lr * factor(step)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    # Checkpoints ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Return the checkpoint dict (model, optimizer, scheduler, scaler, epoch, history, RNG)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "planned_epochs": self.planned_epochs,
            "planned_minutes": self.config.training.time_limit_minutes if self.planned_epochs is not None else None,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "rng": capture_rng_state(),
            "class_names": self.class_names,
            "network": self.network_info,
            "config": config_to_dict(self.config),
        }

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        """Restore a checkpoint written by ``state``."""
        self.network.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        # A plan made under the same time limit is kept. Another limit gives the rest of the
        # run a new budget, planned after its first epoch, and no limit trains all epochs.
        planned = checkpoint.get("planned_epochs")
        minutes = self.config.training.time_limit_minutes
        if planned is not None and minutes is not None and checkpoint.get("planned_minutes") == minutes:
            self.planned_epochs = min(int(planned), self.config.training.epochs)
            self._set_epochs(self.planned_epochs)
        if checkpoint.get("grad_scaler"):
            self.scaler.load_state_dict(checkpoint["grad_scaler"])
        self.epoch = int(checkpoint["epoch"])
        self.best_metric = float(checkpoint["best_metric"])
        self.best_epoch = int(checkpoint["best_epoch"])
        self.history = list(checkpoint["history"])
        restore_rng_state(checkpoint["rng"])

    def _save(self, name: str) -> None:
        if self._write:
            save_checkpoint(self.fold_dir / name, self.state())

    def resume(self) -> None:
        """Continue from ``checkpoint_last.pt`` in the fold folder.

        Raises:
            FileNotFoundError: the fold has no checkpoint_last.pt.
        """
        if self.fold_dir is None:
            raise ValueError("resume needs a fold folder")
        path = self.fold_dir / "checkpoint_last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} not found; train without --resume to start this fold")
        if self.context.is_main:
            for temporary in remove_stale_temporaries(self.fold_dir):
                logger.warning("Removed %s, left by a checkpoint write that did not finish", temporary)

        checkpoint = load_checkpoint(path, map_location=self.device)
        stored_classes = list(checkpoint.get("class_names", self.class_names))
        if stored_classes != self.class_names:
            raise InputError(f"cannot resume from {path}: it was trained on classes {stored_classes}, "
                             f"this dataset has {self.class_names}")
        if checkpoint["scheduler"].get("_step_count", 0) > self.total_steps + 1:
            logger.warning("The checkpoint has run more iterations than the new total (%d epochs); the learning "
                           "rate stays at its final value", self.epochs)
        self.load_state(checkpoint)
        logger.info("Resuming from %s after epoch %d", path, self.epoch)

    # Training ------------------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        """Run one optimizer step on a batch; return its loss."""
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)

        with self._autocast():
            output = self.model(image)
            loss = self.loss_function(output, label)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {self.epoch + 1} in {self._precision()}. "
                f"{self._numerics_advice()}"
            )

        clip = self.config.optim.grad_clip
        if self.scaler.is_enabled():
            # The scaler skips the step itself when the gradients overflowed, and lowers its scale.
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if clip > 0:
                nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self._gradients_finite(clip):
                self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach().item())

    def _gradients_finite(self, clip: float) -> bool:
        """Clip the gradients to norm ``clip`` (0 = off) and return whether their norm is finite.

        A NaN gradient, or finite gradients whose norm overflows, would make the
        clipped gradients, and after the step every weight, NaN or zero. The caller
        skips the step instead, as a float16 gradient scaler does.
        ``MAX_SKIPPED_STEPS`` skips in a row raise ``FloatingPointError``.
        """
        parameters = [parameter for parameter in self.network.parameters() if parameter.grad is not None]
        norm = nn.utils.get_total_norm([parameter.grad for parameter in parameters])
        if torch.isfinite(norm):
            if clip > 0:
                nn.utils.clip_grads_with_norm_(parameters, clip, norm)
            self.skipped_steps = 0
            return True

        self.skipped_steps += 1
        where = self._worst_gradients()
        if self.skipped_steps >= MAX_SKIPPED_STEPS:
            raise FloatingPointError(
                f"gradient norm was {norm.item()} in {self.skipped_steps} steps in a row at epoch {self.epoch + 1} "
                f"in {self._precision()} ({where}). {self._numerics_advice()}"
            )
        logger.warning("Skipped an optimizer step at epoch %d: gradient norm %s in %s (%s)", self.epoch + 1,
                       norm.item(), self._precision(), where)
        return False

    def _worst_gradients(self, count: int = 3) -> str:
        """Name the parameters with non-finite gradients, or else the ones with the largest."""
        gradients = {name: parameter.grad for name, parameter in self.network.named_parameters()
                     if parameter.grad is not None}
        nonfinite = [name for name, gradient in gradients.items() if not torch.isfinite(gradient).all()]
        if nonfinite:
            more = f" and {len(nonfinite) - count} more" if len(nonfinite) > count else ""
            return f"not finite in {', '.join(nonfinite[:count])}{more}"
        largest = sorted(gradients, key=lambda name: -gradients[name].abs().max().item())[:count]
        return "largest in " + ", ".join(f"{name} ({gradients[name].abs().max().item():.3g})" for name in largest)

    def _precision(self) -> str:
        return {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(self.amp_dtype, "float32")

    def _numerics_advice(self) -> str:
        advice = {"float16": "set training.amp to bfloat16 or none",
                  "bfloat16": "set training.amp to none (float32)"}.get(self._precision(), "check the input intensities")
        return f"Lower optim.lr, keep optim.grad_clip > 0, or {advice}"

    def _loader(self) -> DataLoader:
        self.patches.set_epoch(self.epoch)
        workers = self.config.data.num_workers
        return DataLoader(
            self.patches, batch_size=self.config.data.batch_size, shuffle=False, num_workers=workers,
            pin_memory=self.device.type == "cuda", drop_last=False,
            # A private generator keeps the loader from drawing on the global torch RNG.
            generator=torch.Generator().manual_seed(self.config.training.seed + self.epoch),
            persistent_workers=False,
        )

    def train_epoch(self) -> float:
        """Train one epoch; return the mean loss over its iterations (and processes)."""
        self.model.train()
        show_bar = not self.quiet and self.context.is_main and sys.stderr.isatty()
        losses = []
        with tqdm(self._loader(), total=self.config.training.iterations_per_epoch, disable=not show_bar,
                  desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="it", leave=False,
                  dynamic_ncols=True) as bar:
            for batch in bar:
                losses.append(self.train_step(batch))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        return all_reduce_mean(sum(losses) / len(losses), self.context)

    # Validation ----------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Segment the validation cases with Gaussian-blended sliding windows.

        Under torchrun each process segments every ``world_size``-th case and
        MONAI's ``DiceMetric`` gathers the results, so every process returns
        the same numbers. With fewer cases than processes every process
        segments every case, which leaves the means unchanged.

        Returns:
            ``{"val_loss", "dice_<class>" per foreground class, "dice_mean"}``.
            A class absent from every reference and prediction has Dice NaN
            and is left out of the mean.
        """
        self.network.eval()
        num_classes = len(self.class_names)
        metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
        validation = self.config.validation
        patch_size = self.config.data.patch_size

        def predictor(window: torch.Tensor) -> torch.Tensor:
            return _full_resolution(self.network(window))

        indices = range(len(self.val_cases))
        if self.context.is_distributed and len(self.val_cases) >= self.context.world_size:
            indices = range(self.context.rank, len(self.val_cases), self.context.world_size)

        loss_sum = 0.0
        for index in indices:
            case = self.val_cases[index]
            image = torch.as_tensor(case["image"]).float().unsqueeze(0).to(self.device)
            label = torch.as_tensor(case["label"]).long().unsqueeze(0).to(self.device)
            if hasattr(image, "as_tensor"):
                image, label = image.as_tensor(), label.as_tensor()
            margin = self.window_margin
            if any(margin):
                image = F.pad(image, [size for axis_margin in reversed(margin) for size in (axis_margin, axis_margin)])
            with self._autocast():
                logits = sliding_window_inference(image, roi_size=list(patch_size),
                                                  sw_batch_size=validation.sw_batch_size, predictor=predictor,
                                                  overlap=validation.overlap, mode="gaussian")
            logits = logits.float()
            if any(margin):
                logits = logits[(slice(None), slice(None), *(slice(m, n - m) for m, n in zip(margin, logits.shape[2:])))]
            loss_sum += float(self.loss_function(logits, label))
            prediction = one_hot(logits.argmax(dim=1, keepdim=True), num_classes)
            metric(y_pred=prediction, y=one_hot(label, num_classes))

        dice = metric.aggregate().cpu().tolist()
        loss_sum, count = all_reduce_sum([loss_sum, float(len(indices))], self.context)
        result = {"val_loss": loss_sum / count}
        for name, value in zip(self.foreground_names, dice):
            result[f"dice_{name}"] = value
        finite = [value for value in dice if not math.isnan(value)]
        result["dice_mean"] = sum(finite) / len(finite) if finite else float("nan")
        self.network.train()
        return result

    # The loop ------------------------------------------------------------------------------------

    def _record(self, row: dict[str, Any], epoch_logger: logging.Logger) -> None:
        self.history.append(row)
        text = f"epoch {row['epoch']}/{self.epochs}: train loss {row['train_loss']:.4f}"
        if row.get("dice_mean") is not None:
            per_class = ", ".join(f"{name} {row[f'dice_{name}']:.4f}" for name in self.foreground_names)
            text += f", val loss {row['val_loss']:.4f}, Dice mean {row['dice_mean']:.4f} ({per_class})"
        text += f", lr {row['lr']:.3g}, {row['seconds']:.1f} s"
        epoch_logger.info(text)
        if self._write:
            write_metrics_csv(self.fold_dir / "metrics.csv", self.history, self.foreground_names)
            plot_progress(self.fold_dir / "progress.png", self.history, self.foreground_names)

    def _plan_epochs(self, elapsed: float, train_seconds: float, validation_seconds: float) -> None:
        """Set ``self.epochs`` so that the run ends within ``training.time_limit_minutes``.

        Called after the first and the second epoch and again after each validation, with
        the timings so far (the first epoch's training time only until others exist). A later call lowers the count when epochs turn out slower than the first.
        In the first half of the planned epochs it may also raise the count again, up to
        ``training.epochs``, when they turn out faster than the first one, by at least 2
        epochs and 5%. Later the count only goes down, so the learning rate never jumps
        up near the end of the schedule.

        Args:
            elapsed: seconds since this run's loop started.
            train_seconds: mean seconds of one epoch's training iterations, the first epoch
                left out once later ones are timed.
            validation_seconds: mean seconds of one validation (0 without validation cases).

        Each further epoch is budgeted at ``train_seconds`` plus its share of a validation
        every ``validation.interval`` epochs, and one validation is kept for the last
        epoch. Under torchrun the processes average their timings, so all of them plan
        the same count.
        """
        totals = all_reduce_sum([elapsed, train_seconds, validation_seconds], self.context)
        elapsed, train_seconds, validation_seconds = (total / self.context.world_size for total in totals)
        minutes = self.config.training.time_limit_minutes
        per_epoch = train_seconds + validation_seconds / self.config.validation.interval
        remaining = minutes * 60.0 - elapsed - validation_seconds
        more = int(remaining // per_epoch) if remaining > 0 and per_epoch > 0 else 0
        cap = self.config.training.epochs if 2 * self.epoch < self.epochs else self.epochs
        planned = min(cap, self.epoch + more)
        if self.epochs < planned < self.epochs + max(2, math.ceil(0.05 * self.epochs)):
            # Timings move by a few percent between validations, so a small raise
            # would only be taken back at the next one.
            planned = self.epochs
        first_plan = self.planned_epochs is None
        self.planned_epochs = planned

        timings = f"epoch {train_seconds:.1f} s, validation {validation_seconds:.1f} s"
        if planned != self.epochs:
            if first_plan:
                logger.info("Time limit %.3g min: training %d of %d epochs (%s)", minutes, planned, self.epochs,
                            timings)
            else:
                logger.info("Time limit %.3g min: %s to %d epochs from %d (%s on average)", minutes,
                            "lowered" if planned < self.epochs else "raised", planned, self.epochs, timings)
            self._set_epochs(planned)
        elif first_plan:
            logger.info("Time limit %.3g min: all %d epochs fit (%s)", minutes, self.epochs, timings)

    def _run_epochs(self, epoch_logger: logging.Logger,
                    after_epoch: Callable[["Trainer"], None] | None) -> None:
        training = self.config.training
        loop_start = time.perf_counter()
        # A plan restored from a checkpoint is kept, because this process cannot know how much
        # time the earlier one spent.
        replan = training.time_limit_minutes is not None and self.planned_epochs is None
        train_times: list[float] = []
        validation_times: list[float] = []
        while self.epoch < self.epochs:
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss = self.train_epoch()
            train_times.append(time.perf_counter() - start)
            self.epoch += 1

            row: dict[str, Any] = {"epoch": self.epoch, "train_loss": train_loss, "lr": lr}
            first_plan = replan and self.planned_epochs is None
            is_last = self.epoch == self.epochs
            validated = len(self.val_cases) > 0 and (
                self.epoch % self.config.validation.interval == 0 or is_last or first_plan)
            if validated:
                validation_start = time.perf_counter()
                row.update(self.validate())
                validation_times.append(time.perf_counter() - validation_start)
            # Plan after the first epoch, the second and each validation. The first epoch pays
            # start-up costs, so the second plan times the epochs without it.
            if replan and (first_plan or validated or len(train_times) == 2) and not is_last:
                timed = train_times[1:] or train_times
                mean_validation = sum(validation_times) / len(validation_times) if validation_times else 0.0
                self._plan_epochs(time.perf_counter() - loop_start, sum(timed) / len(timed), mean_validation)
                is_last = self.epoch == self.epochs
            row["seconds"] = time.perf_counter() - start
            self._record(row, epoch_logger)

            improved = row.get("dice_mean") is not None and row["dice_mean"] > self.best_metric
            if improved:
                self.best_metric = row["dice_mean"]
                self.best_epoch = self.epoch
            if self.epoch % training.checkpoint_interval == 0 or is_last:
                self._save("checkpoint_last.pt")
            if improved:
                self._save("checkpoint_best.pt")
            barrier(self.context)
            if after_epoch is not None:
                after_epoch(self)

    def fit(self, *, resume: bool = False, after_epoch: Callable[["Trainer"], None] | None = None) -> dict[str, Any]:
        """Train until ``training.epochs`` epochs are done, or fewer under ``training.time_limit_minutes``.

        Args:
            resume: continue from the fold's ``checkpoint_last.pt``.
            after_epoch: called after each epoch's checkpoint (for tests and
                callers that poll progress).

        Returns:
            ``{"epochs", "best_dice_mean", "best_epoch", "last"}`` where
            ``last`` is the final epoch's metrics row.

        Raises:
            InputError: CUDA ran out of memory (the message names the settings
                to lower).
            KeyboardInterrupt: re-raised after ``checkpoint_last.pt`` is saved.
        """
        if self._write:
            self.fold_dir.mkdir(parents=True, exist_ok=True)
        with fold_logging(self.fold_dir if self._write else None, quiet=self.quiet,
                          is_main=self.context.is_main) as epoch_logger:
            if resume:
                self.resume()
            if self.epoch >= self.epochs:
                if self.planned_epochs is not None:
                    hint = ("the count the time limit planned; pass --time-limit 0 with a larger --epochs, or a "
                            "new --time-limit, to train longer")
                else:
                    hint = "raise --epochs to train longer"
                logger.info("Fold already trained for %d epoch(s); nothing to do (%s)", self.epoch, hint)
            else:
                logger.info("Training %d epochs of %d iterations on %s in %s (%d training, %d validation cases)",
                            self.epochs - self.epoch, self.config.training.iterations_per_epoch, self.device,
                            str(self.amp_dtype or torch.float32).replace("torch.", ""), self.patches.num_cases,
                            len(self.val_cases))
            try:
                self._run_epochs(epoch_logger, after_epoch)
            except KeyboardInterrupt:
                # NOTE: the interrupted epoch restarts on resume from these
                # weights, so the resumed run is not bit-identical to an
                # uninterrupted one.
                if self._write:
                    self._save("checkpoint_last.pt")
                    logger.warning("Interrupted during epoch %d; saved %s. Continue with --resume.",
                                   self.epoch + 1, self.fold_dir / "checkpoint_last.pt")
                raise
            except torch.OutOfMemoryError as error:
                data = self.config.data
                raise InputError(
                    f"CUDA out of memory on {self.device} with data.patch_size {data.patch_size} and "
                    f"data.batch_size {data.batch_size}: lower data.batch_size first, then data.patch_size "
                    "(each size must stay a multiple of the network's size_divisor), or the network's features; "
                    "training.amp bfloat16 also saves memory"
                ) from error

        last = self.history[-1] if self.history else {}
        return {"epochs": self.epoch, "best_dice_mean": self.best_metric if self.best_epoch > 0 else None,
                "best_epoch": self.best_epoch if self.best_epoch > 0 else None, "last": last}
