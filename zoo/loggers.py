"""Experiment loggers: Weights & Biases (offline unless you are logged in), CSV, or none."""

from __future__ import annotations

import logging
import netrc
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from zoo.errors import ZooError, unknown

log = logging.getLogger(__name__)

KINDS = ("wandb", "csv", "none")
WANDB_MODES = ("auto", "offline", "online")
#: seconds to wait for the W&B server before logging offline (a reachable one answers in well under)
PROBE_SECONDS = 5.0
#: seconds W&B may take to start an online run once its server answered
INIT_SECONDS = 30.0


def wandb_base_url() -> str:
    """The W&B server this process would talk to (``WANDB_BASE_URL``, else the public one)."""
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def wandb_logged_in() -> bool:
    """Whether an API key is configured (env var or ~/.netrc), without touching the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(urlparse(wandb_base_url()).hostname or "api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_unreachable() -> str | None:
    """Why an online W&B run cannot start here (no API key, server unreachable), or None.

    One HTTP request with a short timeout (proxies from the environment apply, as they do to
    W&B): wandb itself would retry for a minute and more before it gives up.
    """
    if not wandb_logged_in():
        return "no API key configured (wandb login, or WANDB_API_KEY)"
    import requests

    url = wandb_base_url()
    try:
        requests.get(url, timeout=PROBE_SECONDS)
    except requests.RequestException as e:
        return f"{url} is unreachable ({type(e).__name__})"
    return None


def _offline_note(reason: str, run_dir: Path) -> None:
    log.warning("W&B online run cannot start: %s; logging offline instead (upload later: wandb sync %s)",
                reason, run_dir / "wandb")


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
        unknown_keys = set(cfg) - {"mode", "project", "entity", "tags"}
        if unknown_keys:
            raise ZooError(f"unknown logger option(s) {sorted(unknown_keys)}; allowed: mode, project, entity, tags")
        reason = wandb_unreachable() if mode == "online" else None
        if reason:  # say so at once and log offline, rather than wait on wandb's retries
            _offline_note(reason, run_dir)
            mode = "offline"
        id_file = run_dir / "wandb_id.txt"  # a resumed run continues the same W&B run
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        try:
            logger = _wandb_logger(cfg, run_dir, name, mode, run_id)
        except Exception as e:  # the server answered, but the run did not start: never stop training
            if mode != "online":
                raise
            _offline_note(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", run_dir)
            wandb.teardown()  # the failed run's ID stays "in use" in wandb's service otherwise
            run_id = uuid.uuid4().hex[:12]
            logger = _wandb_logger(cfg, run_dir, name, "offline", run_id)
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
    logger.log_hyperparams(dict(config))
    return logger


def _wandb_logger(cfg: Mapping[str, Any], run_dir: Path, name: str, mode: str, run_id: str) -> Logger:
    """A ``WandbLogger`` whose run has started (so a failure to start is raised here)."""
    import wandb

    logger = WandbLogger(
        name=name,
        project=cfg.get("project", "zoo"),
        entity=cfg.get("entity"),
        tags=list(cfg.get("tags") or []),
        save_dir=str(run_dir),
        offline=mode == "offline",
        id=run_id,
        resume="allow",
        settings=wandb.Settings(mode=mode, init_timeout=INIT_SECONDS, x_disable_stats=True),
    )
    _ = logger.experiment  # start the run now
    return logger
