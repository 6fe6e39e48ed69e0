"""``python -m zoo.fit`` when things go wrong around the training loop: runs started together,
checkpoints that do not belong to the run, jobs that cannot start, no network for W&B, a
full disk, temporaries of killed writes. Real runs (subprocesses), real files, real sockets."""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_errors import CreatesAFile
from test_resume import TINY

#: subprocess runs of the commands, seconds each: part of the slow suite (python -m pytest -m slow)
pytestmark = pytest.mark.slow

#: a fake W&B API key (the right length: wandb checks it) for a server that does not answer
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"
#: a local port where nothing listens: every connection is refused at once (no network needed)
CLOSED = "http://127.0.0.1:9"


def zoo_fit(*args: str, env: dict[str, str] | None = None, preexec_fn=None, wait: bool = True,
            timeout: int = 600) -> subprocess.Popen | subprocess.CompletedProcess:
    """``python -m zoo.fit`` with the tiny settings (a few seconds of training), captured."""
    tiny = TINY
    if any(a.startswith("model=") for a in args):  # another model group: TINY's llama-only keys go
        tiny = [a for a in TINY if not a.startswith("model.n_heads=")]
    cmd = [sys.executable, "-m", "zoo.fit", *tiny, "trainer.max_steps=2", *args]
    full_env = {"WANDB_MODE": "offline", **os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def assert_one_line_error(proc, fragment: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """An ``out_dir`` with one finished tiny run (``last.ckpt`` at step 2)."""
    out = tmp_path_factory.mktemp("trained")
    proc = zoo_fit(f"out_dir={out}", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def copy_of(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the trained ``out_dir`` (tests change it) and its ``last.ckpt``."""
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    (last,) = out.glob("quickstart/*/checkpoints/last.ckpt")
    return out, last


# --------------------------------------------------------------------------- run folders
def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, cache_dir) -> None:
    # the folder's time stamp with a pattern that is the same for both runs: as if they started
    # in the same second (the default pattern has seconds), so both resolve to one folder
    same_time = "hydra.run.dir=${out_dir}/${name}/${now:%Y}"
    procs = [zoo_fit(f"out_dir={tmp_path}", "logger=csv", same_time, wait=False) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    folders = sorted((tmp_path / "quickstart").iterdir())
    year = time.strftime("%Y")
    assert [f.name for f in folders] == [year, f"{year}_2"]
    for folder in folders:  # each a whole run of its own
        assert (folder / "report.json").is_file() and (folder / "model" / "model.safetensors").is_file()
        assert sorted(p.name for p in (folder / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]


# --------------------------------------------------------------------------- resume checks
RESUME_REFUSED = [
    # (what, how to resume, extra overrides, fragment of the one-line error)
    ("another tokenizer", "path", ["data.tokenizer.vocab_size=320"], "different tokenizer than this run's"),
    ("another family", "path", ["model=mixer_tiny"], "holds another model than this run builds (model.family"),
    ("model changed, resume=auto", "auto", ["model.d_model=48"], "model.d_model: 32 there, 48 here"),
    ("truncated last.ckpt, resume=auto", "auto-truncated", [], "unable to read checkpoint"),
    ("malicious last.ckpt, resume=auto", "auto-pickle", [], "refusing"),
]


@pytest.mark.parametrize("what, how, extra, message", RESUME_REFUSED, ids=[r[0] for r in RESUME_REFUSED])
def test_resume_refuses_what_this_run_cannot_continue(what, how, extra, message, trained, tmp_path) -> None:
    out, last = copy_of(trained, tmp_path)
    marker = tmp_path / "pwned"
    if how == "auto-truncated":
        last.write_bytes(last.read_bytes()[:1000])
    elif how == "auto-pickle":
        with open(last, "wb") as f:
            pickle.dump({"state_dict": {}, "zoo": {}, "payload": CreatesAFile(marker)}, f)
    resume = f"resume={last}" if how == "path" else "resume=auto"
    proc = zoo_fit(f"out_dir={out}", "logger=none", resume, *extra)
    assert_one_line_error(proc, message)
    if "model" in message:  # says what to do instead
        assert "init_from=" in proc.stderr and "out_dir=" in proc.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------- jobs that cannot start
def test_gpu_trainer_without_gpu_is_refused_before_anything_is_created(tmp_path, cache_dir) -> None:
    proc = zoo_fit(f"out_dir={tmp_path}", "trainer=ddp", "logger=wandb")
    assert_one_line_error(proc, "trainer=ddp_cpu")
    assert "trainer=cpu" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no W&B run


def test_context_longer_than_the_corpus_allows_is_refused(tmp_path, cache_dir) -> None:
    proc = zoo_fit(f"out_dir={tmp_path}", "logger=none", "data.n_ctx=100000", "data.batch_size=64")
    assert_one_line_error(proc, "data.n_ctx=100000")
    assert "fewer than one batch" in proc.stderr


# --------------------------------------------------------------------------- W&B without network
@pytest.mark.parametrize("case, env", [
    ("online, no API key", {"WANDB_MODE": "online", "WANDB_API_KEY": None, "WANDB_BASE_URL": CLOSED}),
    ("API key, server refuses", {"WANDB_MODE": None, "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": CLOSED}),
    ("API key, proxy refuses", {"WANDB_MODE": "online", "WANDB_API_KEY": FAKE_KEY, "HTTPS_PROXY": CLOSED,
                                "HTTP_PROXY": CLOSED}),
], ids=lambda x: x if isinstance(x, str) else "")
def test_wandb_falls_back_to_offline_at_once(case, env, tmp_path, cache_dir) -> None:
    start = time.monotonic()
    proc = zoo_fit(f"out_dir={tmp_path}", "logger=wandb", env={"WANDB_SILENT": "true", **env}, timeout=300)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "quickstart").iterdir()
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    notes = [line for line in (proc.stdout + proc.stderr).splitlines() if "logging offline instead" in line]
    assert len(notes) == 1, proc.stderr[-3000:]
    assert took < 150, f"{took:.0f} s"  # a run of a few seconds; wandb's own retries took 80 s and failed


# --------------------------------------------------------------------------- the disk
def small_files(limit: int):
    """A ``preexec_fn``: files of the child may not grow past ``limit`` bytes (EFBIG beyond),
    the real error of a full disk without filling one."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_on_a_checkpoint_write_says_so_and_keeps_last_ckpt(trained, tmp_path) -> None:
    out, last = copy_of(trained, tmp_path)
    before = last.read_bytes()
    # resume (reads only), then the write of step 5's last.ckpt cannot fit
    proc = zoo_fit(f"out_dir={out}", "logger=none", "resume=auto", "trainer.max_steps=8",
                   preexec_fn=small_files(len(before) // 2))
    # (in this copy Lightning names its next last checkpoint last-v1.ckpt: the dirpath changed)
    assert_one_line_error(proc, f"cannot write checkpoint {last.parent}/last")
    assert "free on its disk" in proc.stderr and "ulimit -f" in proc.stderr
    assert last.read_bytes() == before  # the previous checkpoint is intact
    assert not list(last.parent.glob(".*.tmp-*"))  # and the failed write left nothing


def test_stale_temporaries_of_killed_writes_are_removed(trained, tmp_path) -> None:
    out, last = copy_of(trained, tmp_path)
    ckpt_dir = last.parent
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that no longer exists
    dead = ckpt_dir / f".last.ckpt.tmp-{gone.pid}"
    old = ckpt_dir / f".step-5.ckpt.tmp-{os.getpid()}"  # a live PID, but idle since long before this run
    live = ckpt_dir / f".last.ckpt.tmp-{os.getpid()}"  # a live PID, just written: may be a write in progress
    mine = ckpt_dir / "notes.tmp-1"  # not a checkpoint temporary: never touched
    for p in (dead, old, live, mine):
        p.write_bytes(b"half a checkpoint")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    proc = zoo_fit(f"out_dir={out}", "logger=none", "resume=auto", "trainer.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not dead.exists() and not old.exists()
    assert live.exists() and mine.exists()
