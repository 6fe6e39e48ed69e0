"""Experiment loggers: Weights & Biases (offline unless you are logged in), CSV, or none."""

from __future__ import annotations

import logging
import netrc
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from zoo.errors import ZooError, unknown

log = logging.getLogger(__name__)

KINDS = ("wandb", "csv", "none")
WANDB_MODES = ("auto", "offline", "online")


def wandb_logged_in() -> bool:
    """Whether an API key is configured (env var or ~/.netrc), without touching the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str = "auto") -> str:
    """``online`` only when asked for (mode or ``WANDB_MODE``) or when logged in; else ``offline``."""
    if requested not in WANDB_MODES:
        raise unknown("logger.mode", requested, WANDB_MODES)
    env = os.environ.get("WANDB_MODE", "").lower()
    if requested != "auto":
        return requested
    if env in ("offline", "disabled", "dryrun"):
        return "offline"
    if env == "online":
        return "online"
    return "online" if wandb_logged_in() else "offline"


def build_logger(
    cfg: Mapping[str, Any], run_dir: Path, name: str, config: Mapping[str, Any]
) -> Logger | list[Logger] | bool:
    """The logger a ``logger:`` config section describes, with the resolved run config logged.

    ``kind`` is one of :data:`KINDS`, or a list of them for several loggers at once
    (e.g. ``logger.kind=[wandb,csv]``).
    """
    cfg = dict(cfg)
    kind = cfg.pop("kind", "wandb")
    if isinstance(kind, list | tuple):
        loggers = [build_logger({**cfg, "kind": k}, run_dir, name, config) for k in kind]
        return [lg for lg in loggers if isinstance(lg, Logger)] or False
    if kind not in KINDS:
        raise unknown("logger.kind", kind, KINDS)
    if kind == "none":
        return False
    if kind == "csv":
        logger: Logger = CSVLogger(save_dir=str(run_dir), name="csv", version="")
    else:
        import wandb

        mode = wandb_mode(cfg.get("mode", "auto"))
        id_file = run_dir / "wandb_id.txt"  # a resumed run continues the same W&B run
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
        unknown_keys = set(cfg) - {"mode", "project", "entity", "tags"}
        if unknown_keys:
            raise ZooError(f"unknown logger option(s) {sorted(unknown_keys)}; allowed: mode, project, entity, tags")
        logger = WandbLogger(
            name=name,
            project=cfg.get("project", "zoo"),
            entity=cfg.get("entity"),
            tags=list(cfg.get("tags") or []),
            save_dir=str(run_dir),
            offline=mode == "offline",
            id=run_id,
            resume="allow",
            settings=wandb.Settings(init_timeout=60, x_disable_stats=True),
        )
        try:
            _ = logger.experiment  # start the run now, so a network failure is caught here
        except Exception as e:  # any failure to reach W&B must not stop training
            if mode != "online":
                raise
            log.warning("W&B online run failed to start (%s); logging offline instead", e)
            os.environ["WANDB_MODE"] = "offline"
            return build_logger({**cfg, "kind": "wandb", "mode": "offline"}, run_dir, name, config)
    logger.log_hyperparams(dict(config))
    return logger
