"""The SLURM launch path for real: scripts/slurm/train.sbatch on a two-node cluster on loopback.

scripts/slurm/local_cluster.sh starts a private munged, slurmctld and two slurmd (nodes n1, n2) on
this machine. The tests ``sbatch`` the production template with the CPU/gloo preset
configs/trainer/slurm_cpu.yaml and check what Lightning made of the allocation (SLURMEnvironment,
global/node ranks, MASTER_ADDR/PORT), the stable run directory, the W&B run id, and preemption:
SIGUSR1 -> hpc_ckpt_1.ckpt -> ``scontrol requeue`` -> the same job resumes from that checkpoint.

Needs root and ``apt-get install -y slurm-wlm munge``; skipped otherwise. Run with
``pytest -m slow tests/test_slurm.py`` (about 2.5 min on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm" / "local_cluster.sh"
TEMPLATE = REPO / "scripts" / "slurm" / "train.sbatch"
PROBE = "[slurm-probe]"


class RankProbe(Callback):
    """Prints what Lightning made of the SLURM allocation (the job log is the only window into the ranks).

    ``step_seconds`` sleeps after each training batch so that a test's SIGUSR1 lands while both ranks
    are outside a collective; the handler's checkpoint barrier then pairs up on both ranks.
    """

    def __init__(self, step_seconds: float = 0.0) -> None:
        self.step_seconds = step_seconds

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        env = trainer.strategy.cluster_environment
        print(f"{PROBE} setup environment={type(env).__name__} global_rank={trainer.global_rank} "
              f"node_rank={trainer.node_rank} local_rank={trainer.local_rank} world_size={trainer.world_size} "
              f"master={env.main_address}:{env.main_port} restart={os.environ.get('SLURM_RESTART_COUNT', '0')}",
              flush=True)

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        print(f"{PROBE} rank={trainer.global_rank} step={trainer.global_step}", flush=True)
        time.sleep(self.step_seconds)


def _probe_arg(step_seconds: float = 0.0) -> str:
    # pytest imports this file as `test_slurm`; the job imports it from the repo root (PYTHONPATH).
    spec = {"class_path": "tests.test_slurm.RankProbe", "init_args": {"step_seconds": step_seconds}}
    return "--trainer.callbacks+=" + json.dumps(spec)


# Tiny CPU run: two ranks on the 2 shared cores, one torch thread each; plain `strategy: ddp`.
TINY = ["--config", "configs/trainer/slurm_cpu.yaml", "--data.init_args.image_size", "64",
        "--data.init_args.batch_size", "4", "--trainer.limit_val_batches", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# --gpus-per-node / --cpus-per-task override the template's GPU-node values (8 CPUs, 4 GPUs per node).
SBATCH = ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"]


def _missing_tools() -> list[str]:
    return [t for t in ("sbatch", "scontrol", "scancel", "munged", "slurmctld", "slurmd")
            if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def _unavailable(reason: str) -> None:
    """Skip where SLURM cannot run; in CI's SLURM stage (LITSEG_REQUIRE_SLURM=1) that is a failure."""
    if os.environ.get("LITSEG_REQUIRE_SLURM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_conf():
    """Start the throwaway cluster in a fresh scratch directory; stop it (by pid files) afterwards.

    With ``LITSEG_SLURM_LOG_DIR`` set, the daemons' logs are copied there before the scratch
    directory goes (CI prints them when a SLURM test fails).
    """
    missing = _missing_tools()
    if missing:
        _unavailable(f"SLURM not installed (missing {', '.join(missing)}): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        _unavailable("the local SLURM cluster needs root (slurmd, munged, /etc/hosts)")
    scratch = Path(tempfile.mkdtemp(prefix="litseg-slurm-", dir="/tmp"))
    env = os.environ | {"LITSEG_SLURM_DIR": str(scratch)}
    start = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], env=env, capture_output=True, text=True,
                           timeout=120, check=False)
    try:
        if start.returncode != 0:
            _unavailable(f"local SLURM cluster did not start: {start.stderr.strip() or start.stdout.strip()}")
        yield scratch / "slurm.conf"
    finally:
        stop = subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        log_dir = os.environ.get("LITSEG_SLURM_LOG_DIR")
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            for log in scratch.rglob("*.log"):
                shutil.copy(log, Path(log_dir) / log.name)
        assert stop.returncode == 0, stop.stderr
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def workdir(tmp_path):
    """A submit directory that sees the repo's train.py / configs / data, so runs/ and logs/ land in tmp."""
    for name in ("train.py", "configs", "sample_data"):
        (tmp_path / name).symlink_to(REPO / name)
    # slurmd opens --output=logs/%x-%j.out before the script runs: its `mkdir -p logs` comes too late.
    (tmp_path / "logs").mkdir()
    return tmp_path


def _job_env(slurm_conf: Path) -> dict[str, str]:
    env = os.environ.copy()
    env.pop("WANDB_DIR", None)  # the template's logger save_dir decides where W&B writes
    return env | {
        "SLURM_CONF": str(slurm_conf), "PYTHON": sys.executable, "PYTHONPATH": str(REPO),
        "LOGGER": "configs/logger/wandb_offline.yaml", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
    }


def _job_info(job_id: str, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True,
                         check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def _probe_setups(log: str) -> list[dict[str, str]]:
    return [dict(kv.split("=", 1) for kv in line.split()[2:])
            for line in log.splitlines() if line.startswith(f"{PROBE} setup")]


def _checkpoint_step(path: Path) -> int:
    from litseg.checkpoint import load_checkpoint

    return int(load_checkpoint(path)["global_step"])


@pytest.mark.slow
def test_sbatch_template_runs_two_node_ddp(slurm_conf, workdir):
    env = _job_env(slurm_conf)
    proc = subprocess.run([*SBATCH, "--wait", str(TEMPLATE), "configs/weak_unet/full.yaml", *TINY,
                           "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", _probe_arg()],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600, check=False)
    job_id = proc.stdout.split(";")[0].strip()
    log_path = workdir / "logs" / f"litseg-{job_id}.out"
    log = log_path.read_text() if log_path.exists() else ""
    assert proc.returncode == 0, f"sbatch: {proc.stderr}\n--- job log ---\n{log[-6000:]}"

    # Lightning took ranks from SLURM (srun started both; nothing was spawned).
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in log
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert log.count("SLURM auto-requeueing enabled. Setting signal handlers.") == 2
    setups = _probe_setups(log)
    assert sorted((s["global_rank"], s["node_rank"], s["local_rank"]) for s in setups) == [
        ("0", "0", "0"), ("1", "1", "0")]
    master = f"n1:{15000 + int(job_id[-4:])}"  # first node of n[1-2]; port 15000 + last 4 digits of the job id
    for s in setups:
        assert (s["environment"], s["world_size"], s["master"], s["restart"]) == ("SLURMEnvironment", "2", master, "0")
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in log

    # Stable run directory runs/slurm-<job id>; W&B checkpoints and config under <project>/<run id>.
    run_dir = workdir / "runs" / f"slurm-{job_id}"
    wandb_run = run_dir / "litseg" / job_id
    trainer = yaml.safe_load((wandb_run / "config.yaml").read_text())["trainer"]
    # devices comes from the command line as text ("1"); Lightning accepts both.
    assert (trainer["num_nodes"], str(trainer["devices"]), trainer["accelerator"]) == (2, "1", "cpu")
    assert trainer["default_root_dir"] == f"runs/slurm-{job_id}"
    assert trainer["logger"]["init_args"]["id"] == job_id
    assert trainer["plugins"][0]["class_path"].endswith("SLURMEnvironment")
    assert _checkpoint_step(wandb_run / "checkpoints" / "last.ckpt") == 2  # 2 batches per rank, DDP-synchronised
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert [p.name.rsplit("-", 1)[1] for p in offline] == [job_id]  # W&B run id == SLURM job id
    assert (offline[0] / f"run-{job_id}.wandb").is_file()


def _wait_for(predicate, timeout: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = log_path.read_text() if log_path.exists() else "(no log)"
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n--- job log ---\n{log[-6000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_sigusr1_checkpoints_requeues_and_resumes(slurm_conf, workdir):
    env = _job_env(slurm_conf)
    epochs, batches = 2, 2  # the sample's train split gives each rank 2 batches of 4 images
    submit = subprocess.run([*SBATCH, str(TEMPLATE), "configs/weak_unet/full.yaml", *TINY,
                             "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", str(batches),
                             _probe_arg(step_seconds=2.0)],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=True)
    job_id = submit.stdout.split(";")[0].strip()
    log_path = workdir / "logs" / f"litseg-{job_id}.out"
    run_dir = workdir / "runs" / f"slurm-{job_id}"

    def log() -> str:
        return log_path.read_text() if log_path.exists() else ""

    _wait_for(lambda: f"{PROBE} rank=0 step=1" in log(), 300, "the first training step", log_path)
    # Steps only (no --batch/--full): the python ranks get SIGUSR1, the batch shell would die of it.
    subprocess.run(["scancel", "--signal=USR1", job_id], env=env, check=True, timeout=30)

    def finished() -> bool:
        info = _job_info(job_id, env)
        return info["Restarts"] != "0" and info["JobState"] in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}

    _wait_for(finished, 400, "the requeued job to finish", log_path)
    info, text = _job_info(job_id, env), log()
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0"), text[-6000:]

    # First launch: SIGUSR1 -> hpc checkpoint in default_root_dir -> scontrol requeue by rank 0.
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file()
    hpc_step = _checkpoint_step(hpc)
    assert 1 <= hpc_step < epochs * batches
    assert "Handling auto-requeue signal: 10" in text
    assert f"Requeued SLURM job: {job_id}" in text
    # Second launch (same job id, same run dir, output appended): resumes from it and finishes.
    second = text[text.index("restart=1"):]
    assert f"Restoring states from the checkpoint path at runs/slurm-{job_id}/hpc_ckpt_1.ckpt" in second
    assert f"Restored all states from the checkpoint at runs/slurm-{job_id}/hpc_ckpt_1.ckpt" in second
    assert f"`Trainer.fit` stopped: `max_epochs={epochs}` reached." in second
    assert sorted((s["global_rank"], s["node_rank"], s["restart"]) for s in _probe_setups(text)) == [
        ("0", "0", "0"), ("0", "0", "1"), ("1", "1", "0"), ("1", "1", "1")]
    # No step lost or repeated: the requeued ranks continue right after the checkpoint's step (mid-epoch).
    for rank in (0, 1):
        steps = [int(m) for m in re.findall(rf"^{re.escape(PROBE)} rank={rank} step=(\d+)$", second, re.MULTILINE)]
        assert steps == list(range(hpc_step + 1, epochs * batches + 1)), (rank, steps)
    assert _checkpoint_step(run_dir / "litseg" / job_id / "checkpoints" / "last.ckpt") == epochs * batches
    # Both launches log to the same W&B run id.
    ids = sorted(p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*"))
    assert ids == [job_id, job_id]
