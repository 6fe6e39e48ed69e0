"""Lightning callbacks and plugins that keep training runs safe to kill and honest about NaNs.

* :class:`RNGState` puts the Python, NumPy and torch random states into every checkpoint,
  so a resumed run draws the same numbers as an uninterrupted one.
* :class:`SaveOnInterrupt` writes ``last.ckpt`` when the run is stopped by SIGTERM
  (preemption, ``kill``) or SIGINT (Ctrl-C), then lets Lightning exit.
* :class:`NonFiniteGuard` checks the loss and the gradient norm after every backward pass
  and either stops (naming the step and the tensor) or skips the optimizer step.
* :class:`LoggedStepsThroughput` is Lightning's ``ThroughputMonitor`` without its CUDA
  synchronisation after every training step: it times only the steps that write logs.
* :class:`AtomicCheckpointIO` writes checkpoints to a temporary file and renames it into
  place, so a kill during a write never leaves a half-written ``last.ckpt``; a write that
  fails (a full disk) says so in one line and leaves the previous file as it was.
  :func:`remove_stale_temporaries` removes the temporaries of writes that were killed.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ThroughputMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException

from zoo.errors import NO_SPACE, ZooError, space_note, unknown
from zoo.schema import NONFINITE_ACTIONS

log = logging.getLogger(__name__)


#: errors that mean "no room for the file": a full disk, a quota, a file size limit
#: the name of a temporary checkpoint file: ``.last.ckpt.tmp-PID`` (PID: the writing process)
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
#: a temporary not modified for this long is no write in progress (a write updates it constantly)
IDLE_SECONDS = 60.0


def temporary_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(folder: Path, started: float) -> list[Path]:
    """Delete the temporary checkpoint files (``.NAME.tmp-PID``) that killed writes left in
    ``folder``: those whose process is gone, or that were idle since before this run
    ``started`` (a reused PID). Nothing else is touched. Returns the files removed."""
    removed = []
    for p in sorted(folder.glob(".*.tmp-*")) if folder.is_dir() else []:
        m = TEMPORARY.match(p.name)
        if m is None or not p.is_file() or int(m["pid"]) == os.getpid():
            continue
        try:
            stale = not _alive(int(m["pid"])) or p.stat().st_mtime < started - IDLE_SECONDS
            if stale:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
    if removed:
        log.info("removed %d temporary file(s) of killed checkpoint writes in %s", len(removed), folder)
    return removed


def write_failed(path: Path, error: BaseException) -> ZooError:
    """The one-line error for a checkpoint that could not be written: the path, why (as far as
    the error tells), the free space there and a file size limit if one is set."""
    code = getattr(error, "errno", None)
    if code in NO_SPACE:
        why = os.strerror(code).lower()
    else:  # torch's writer drops the errno: "[enforce fail at inline_container.cc:...] ..."
        why = f"the write failed ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
    return ZooError(
        f"cannot write checkpoint {path}: {why}; {space_note(path.parent)}. "
        f"Free some space (or write runs elsewhere: out_dir=...); any previous {path.name} is unchanged"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes ``.NAME.tmp-PID`` and renames it over ``path``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except OSError as e:
            raise write_failed(path, e) from e
        except RuntimeError as e:
            if "inline_container" not in str(e) and "PytorchStreamWriter" not in str(e):
                raise
            raise write_failed(path, e) from e
        finally:
            tmp.unlink(missing_ok=True)


class RNGState(Callback):
    """Saves and restores the global random number generators with every checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, key, *rest = state["python"]
        random.setstate((version, tuple(key), *rest))
        name, keys, *np_rest = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *np_rest))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class SaveOnInterrupt(Callback):
    """Writes ``last.ckpt`` (through the run's checkpoint callback) on SIGTERM or Ctrl-C."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException | KeyboardInterrupt) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)
            if trainer.is_global_zero:
                log.warning(
                    "stopped by %s at step %d; saved %s — continue with resume=auto",
                    "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C",
                    trainer.global_step, self.path,
                )




class NonFiniteLoss(ZooError):
    """Training produced a NaN or infinity (raised when ``nonfinite=stop``)."""


class NonFiniteGuard(Callback):
    """Never trains on NaN: checks the loss and gradients of every step.

    ``action="stop"`` raises :class:`NonFiniteLoss` naming the step and the first offending
    tensor; ``action="skip"`` zeroes the gradients so the optimizer step changes nothing,
    logs a warning, and counts skipped steps (``train/skipped_steps``). The check costs one
    fused norm over the gradients and one device-to-host read per step.
    """

    def __init__(self, action: str = "stop") -> None:
        if action not in NONFINITE_ACTIONS:
            raise unknown("nonfinite action", action, NONFINITE_ACTIONS)
        self.action = action
        self.skipped = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        # one fused norm per tensor, and ONE device-to-host read for loss and gradients together
        checks = [self._loss.reshape(1)] if self._loss is not None else []
        if grads:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            if hasattr(norm, "full_tensor"):  # sharded gradients (FSDP2): a DTensor
                norm = norm.full_tensor()
            checks.append(norm.reshape(1))
        if not checks or bool(torch.isfinite(torch.cat([c.float() for c in checks])).all()):
            return
        loss_ok = self._loss is None or bool(torch.isfinite(self._loss))
        what = "loss" if not loss_ok else self._first_bad_gradient(pl_module)
        msg = f"non-finite {what} at step {trainer.global_step}"
        if self.action == "stop":
            raise NonFiniteLoss(
                f"{msg}; training stopped (set nonfinite=skip to skip such steps, or lower optim.lr)"
            )
        self.skipped += 1
        log.warning("%s; skipping this optimizer step (%d skipped so far)", msg, self.skipped)
        for p in pl_module.parameters():
            p.grad = None
        pl_module.log("train/skipped_steps", float(self.skipped))

    @staticmethod
    def _first_bad_gradient(pl_module: L.LightningModule) -> str:
        for name, p in pl_module.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                return f"gradient of {name}"
        return "gradient"


class LoggedStepsThroughput(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` (tokens/s, samples/s), timed only at logging steps.

    The stock callback calls ``torch.cuda.synchronize()`` after EVERY training step so that
    its clock is right: a host-device sync in the hot path. This one counts every batch but
    reads the clock (and synchronises) only on the steps that write logs
    (``log_every_n_steps``), and keeps enough of them that its rates still cover the last
    ``steps`` training steps (e.g. 20 steps = 3 readings 10 steps apart). On CPU it logs the
    same values as the stock callback. FLOP/s come from the module's ``flops_per_batch``
    (:attr:`zoo.lit.language_model.LanguageModelTask.flops_per_batch`), summed over the
    batches between readings.
    """

    def __init__(self, batch_size_fn, length_fn=None, steps: int = 20, log_every_n_steps: int = 10, **kwargs):
        super().__init__(batch_size_fn=batch_size_fn, length_fn=length_fn,
                         window_size=max(2, -(-steps // max(log_every_n_steps, 1)) + 1), **kwargs)
        self._carry = self._empty_carry()
        self._carried_flops = 0.0  # FLOPs of the carried batches, added to the next reading

    @staticmethod
    def _empty_carry() -> dict[str, float]:
        """What the batches since the last reading add up to."""
        return {"samples": 0, "lengths": 0, "batches": 0, "flops": 0.0}

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._carry = self._empty_carry()
        super().on_train_start(trainer, *args)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           *args: Any) -> None:
        if not trainer.is_global_zero:
            return
        if not trainer._logger_connector.should_update_logs or trainer.fit_loop._should_accumulate():
            self._carry["samples"] += self.batch_size_fn(batch)
            self._carry["lengths"] += self.length_fn(batch) if self.length_fn is not None else 0
            self._carry["batches"] += 1
            self._carry["flops"] += getattr(pl_module, "flops_per_batch", None) or 0
            return
        # add the batches since the last reading; the stock update adds this one and reads the clock
        stage = trainer.state.stage
        self._samples[stage] += self._carry["samples"]
        self._lengths[stage] += self._carry["lengths"]
        self._batches[stage] += self._carry["batches"]
        self._carried_flops = self._carry["flops"]
        self._carry = self._empty_carry()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, iter_num: int) -> None:
        super()._update(trainer, pl_module, batch, iter_num)
        flops = self._throughputs[trainer.state.stage]._flops  # the stock update counted this batch's only
        if flops and self._carried_flops:
            flops[-1] += self._carried_flops * trainer.world_size
        self._carried_flops = 0.0
