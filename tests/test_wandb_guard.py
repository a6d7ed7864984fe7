"""An unreachable W&B (no network, no / bad key) never takes a run down: the run continues offline."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from jsonargparse import Namespace

from litseg import wandb_guard
from litseg.cli import LitSegCLI
from litseg.wandb_guard import WANDB_INIT_TIMEOUT_S, guard_wandb_loggers
from tests.helpers import REPO, TINY_PET, free_port

WANDB = "lightning.pytorch.loggers.WandbLogger"
CSV = "lightning.pytorch.loggers.CSVLogger"
GOOD_KEY = "local-" + "k" * 40  # W&B's key format, never sent anywhere


@pytest.fixture(autouse=True)
def _no_wandb_environment(tmp_path, monkeypatch):
    """No key, no netrc, no server settings from the machine; W&B in its default (online) mode."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL",
                 "WANDB_INIT_TIMEOUT", "WANDB_DISABLED", wandb_guard.PROBE_TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))  # does not exist
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def server(monkeypatch):
    """A local TCP listener standing in for the W&B server (the kernel completes the handshake)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setenv("WANDB_BASE_URL", url)
        yield url


@pytest.fixture
def closed_port_url(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    monkeypatch.setenv("WANDB_BASE_URL", url)
    return url


def _trainer(*loggers: Namespace) -> Namespace:
    return Namespace(logger=list(loggers) if len(loggers) != 1 else loggers[0])


def _wandb(save_dir: str = "runs", **init_args) -> Namespace:
    args = {"project": "litseg", "save_dir": save_dir, "resume": "allow", "log_model": False} | init_args
    return Namespace(class_path=WANDB, init_args=Namespace(**args))


def test_no_key_goes_offline_with_the_reason_and_the_sync_hint(server):
    cfg = _trainer(_wandb("runs/x"))
    with pytest.warns(UserWarning, match="W&B unreachable"):
        warnings = guard_wandb_loggers(cfg)
    assert cfg.logger.init_args.offline is True
    assert len(warnings) == 1
    message = warnings[0]
    assert message.startswith("W&B unreachable (no API key")
    assert "logging offline to runs/x/wandb/offline-run-*" in message
    assert message.endswith("upload later with: wandb sync runs/x/wandb/offline-run-*")


def test_malformed_key_goes_offline_and_the_key_is_never_in_the_message(server, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "bad-SECRET42")
    cfg = _trainer(_wandb())
    with pytest.warns(UserWarning):
        (message,) = guard_wandb_loggers(cfg)
    assert cfg.logger.init_args.offline is True
    assert "WANDB_API_KEY is malformed" in message and "SECRET42" not in message


def test_unreachable_host_goes_offline_within_the_bound(closed_port_url, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", GOOD_KEY)
    cfg = _trainer(_wandb())
    timeout = 2.0
    start = time.monotonic()
    with pytest.warns(UserWarning):
        (message,) = guard_wandb_loggers(cfg, timeout=timeout)
    assert time.monotonic() - start < timeout + 1
    assert cfg.logger.init_args.offline is True
    port = closed_port_url.rsplit(":", 1)[1]
    assert f"cannot connect to 127.0.0.1:{port}" in message and "wandb sync runs/wandb/offline-run-*" in message
    assert GOOD_KEY not in message


def test_a_hanging_lookup_or_connect_is_cut_at_the_env_timeout(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", GOOD_KEY)
    monkeypatch.setenv(wandb_guard.PROBE_TIMEOUT_ENV, "0.5")

    def hang(*args, **kwargs):  # DNS on a machine without network: create_connection's timeout does not apply
        time.sleep(5)
        raise OSError("never answered")

    monkeypatch.setattr(wandb_guard.socket, "create_connection", hang)
    cfg = _trainer(_wandb())
    start = time.monotonic()
    with pytest.warns(UserWarning):
        (message,) = guard_wandb_loggers(cfg, timeout=30)
    assert time.monotonic() - start < 0.5 + 1
    assert "no answer from api.wandb.ai:443 within 0.5 s" in message
    assert cfg.logger.init_args.offline is True


def test_reachable_server_with_a_key_stays_online_and_bounds_wandb_init(server, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", GOOD_KEY)
    cfg = _trainer(_wandb())
    assert guard_wandb_loggers(cfg) == []
    assert not cfg.logger.init_args.get("offline")
    assert os.environ["WANDB_INIT_TIMEOUT"] == str(WANDB_INIT_TIMEOUT_S)


def test_key_from_the_netrc_file_counts(server, tmp_path):
    netrc = Path(os.environ["NETRC"])
    netrc.parent.mkdir(parents=True)
    netrc.write_text(f"machine {server.split('://')[1]}\n  login user\n  password {GOOD_KEY}\n")
    netrc.chmod(0o600)
    cfg = _trainer(_wandb())
    assert guard_wandb_loggers(cfg) == []
    assert not cfg.logger.init_args.get("offline")


def test_an_explicit_wandb_init_timeout_is_kept(server, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", GOOD_KEY)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "7")
    guard_wandb_loggers(_trainer(_wandb()))
    assert os.environ["WANDB_INIT_TIMEOUT"] == "7"


def test_offline_preset_and_disabled_mode_are_untouched(closed_port_url, monkeypatch):
    offline = _trainer(_wandb(offline=True))
    before = offline.clone()
    assert guard_wandb_loggers(offline) == []
    assert offline == before

    for mode in ("disabled", "offline", "dryrun"):
        monkeypatch.setenv("WANDB_MODE", mode)
        online = _trainer(_wandb())
        assert guard_wandb_loggers(online) == []
        assert not online.logger.init_args.get("offline"), mode
    assert "WANDB_INIT_TIMEOUT" not in os.environ


def test_only_the_wandb_logger_of_a_list_changes(closed_port_url):
    csv = Namespace(class_path=CSV, init_args=Namespace(save_dir="runs/csv", name=None))
    cfg = _trainer(csv, _wandb("runs/w", log_model=True))
    csv_before = csv.clone()
    with pytest.warns(UserWarning):
        (message,) = guard_wandb_loggers(cfg)
    assert cfg.logger[0] == csv_before and "offline" not in cfg.logger[0].init_args
    assert cfg.logger[1].init_args.offline is True
    assert cfg.logger[1].init_args.log_model is False  # Lightning refuses offline + log_model
    assert "log_model turned off" in message and "runs/w/wandb/offline-run-*" in message


@pytest.mark.parametrize("logger", [None, False, True])
def test_no_logger_config_is_a_no_op(logger):
    assert guard_wandb_loggers(Namespace(logger=logger)) == []
    assert guard_wandb_loggers(None) == []


class GuardedCLI(LitSegCLI):
    """The hook as litseg/cli.py calls it."""

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        guard_wandb_loggers(self._section().get("trainer"))


def test_wandb_preset_without_key_or_network_fits_offline(tmp_path, closed_port_url):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    wandb.finish()  # a run left active by an earlier test would be reused by WandbLogger (and its folder)
    save_dir = tmp_path / "runs"
    with pytest.warns(UserWarning, match="W&B unreachable"):
        cli = GuardedCLI(args=["--config", str(REPO / "configs/weak_unet/points.yaml"),
                               "--config", str(REPO / "configs/logger/wandb.yaml"), *TINY_PET,
                               "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                               "--trainer.limit_val_batches", "1",
                               "--trainer.logger.init_args.save_dir", str(save_dir)], run=False)
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger) and logger._offline
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert cli.trainer.state.finished and cli.trainer.current_epoch == 1
        assert logger.experiment.settings.mode in ("offline", "dryrun")
    finally:
        wandb.finish()
    runs = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
