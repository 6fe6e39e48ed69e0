"""Progress of a run as log lines, for output that is a file rather than a terminal.

Lightning's live progress bar redraws one line of a terminal. Written to a file (``nohup
python -m zoo.fit ... > log``, a cluster's job log) the rich bar prints nothing until the run
ends, and tqdm's fills the file with carriage returns. :class:`LineProgress` replaces it
there: one plain log line every ``every_s`` seconds of training, one when a validation
starts and one with its result, so ``tail log`` answers "how far, how fast, how good, how
long still". :func:`progress_callbacks` picks it when standard error is not a terminal.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from datetime import timedelta
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar

log = logging.getLogger(__name__)

#: metrics a validation line shows, in this order, when the run logs them
VAL_KEYS = ("val/bpb", "val/ce", "val/bpb_free_vector")


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class LineProgress(ProgressBar):
    """Training progress as one log line every ``every_s`` seconds (rank 0 only).

    A training line reads ``step 200/600 (33%) · train/loss 2.41 · train/bpb 1.05 ·
    1,430 tok/s · elapsed 0:09:32 · eta 0:19:04``. The rate and the ETA are those of the
    last ``window`` lines' span (about ``window x every_s`` seconds, validations included),
    so they follow a run whose speed changes (another job on the machine); they count only
    the steps this process ran, so a resumed run does not credit those before its restart.
    A validation logs ``validating at step 200 (68 batches)`` and then ``step 200 · val/bpb
    1.0631 · val/ce 2.8113 · 41 s``.
    """

    def __init__(self, every_s: float = 60.0, window: int = 5) -> None:
        super().__init__()
        self.every_s = float(every_s)
        self._enabled = True
        self._start: float | None = None
        self._tokens = 0
        #: (time, step, tokens) at the start and at the last ``window`` lines
        self._marks: deque[tuple[float, int, int]] = deque(maxlen=max(int(window), 1) + 1)
        self._last_line = 0.0
        self._val_start = 0.0

    # ProgressBar's switches: Lightning turns the bar off on non-zero ranks and during sanity checks
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _show(self, trainer: L.Trainer) -> bool:
        return self._enabled and trainer.is_global_zero and not trainer.sanity_checking

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = self._last_line = time.monotonic()
        self._tokens = 0
        self._marks.clear()
        self._marks.append((self._start, trainer.global_step, 0))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        self._tokens += int(ids.numel()) if ids is not None else 0
        now = time.monotonic()
        done = trainer.global_step >= trainer.max_steps > 0
        if self._show(trainer) and (now - self._last_line >= self.every_s or done):
            self._last_line = now
            log.info(self.train_line(trainer, pl_module, now))

    def train_line(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> str:
        """The line for the current training step."""
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total > 0 else f"step {step}"]
        metrics = self.get_metrics(trainer, pl_module)
        parts += [f"{k} {float(v):.4g}" for k, v in metrics.items() if k.startswith("train/") and _number(v)]
        elapsed = now - self._start if self._start is not None else 0.0
        since, first_step, first_tokens = self._marks[0] if self._marks else (now, step, self._tokens)
        span, ran = now - since, step - first_step
        self._marks.append((now, step, self._tokens))
        if span > 0 and ran > 0:
            parts.append(f"{(self._tokens - first_tokens) / span:,.0f} tok/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if span > 0 and ran > 0 and total > step:
            parts.append(f"eta {_duration((total - step) * span / ran)}")
        return " · ".join(parts)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.monotonic()
        if self._show(trainer):
            batches = sum(int(n) for n in trainer.num_val_batches if n != float("inf"))
            log.info("validating at step %d (%s batches)", trainer.global_step, f"{batches:,}" if batches else "?")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._show(trainer):
            return
        found = trainer.callback_metrics
        parts = [f"step {trainer.global_step}"]
        parts += [f"{k} {float(found[k]):.4f}" for k in VAL_KEYS if k in found]
        parts.append(f"{time.monotonic() - self._val_start:.0f} s")
        log.info(" · ".join(parts))


def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def progress_callbacks(enabled: bool | None, stream: TextIO | None = None) -> list[Callback]:
    """The progress callback for a run: none (Lightning's live bar) when ``stream`` (standard
    error) is a terminal or progress is switched off (``trainer.enable_progress_bar=false``),
    :class:`LineProgress` otherwise."""
    stream = sys.stderr if stream is None else stream
    if enabled is False or _is_terminal(stream):
        return []
    return [LineProgress()]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
