"""Keep an unreachable Weights & Biases from taking a run down.

:func:`guard_wandb_loggers` runs on the parsed trainer config, before the loggers are built. For every
*online* ``WandbLogger`` (``init_args.offline`` falsy and ``WANDB_MODE`` not ``offline`` / ``disabled`` /
``dryrun``) it checks, without talking to the W&B API,

1. that there are credentials: ``WANDB_API_KEY`` (in W&B's key format), ``WANDB_IDENTITY_TOKEN_FILE``,
   or an entry for the server in ``~/.netrc`` (``$NETRC``), read with wandb's own reader; and
2. that the server answers a plain TCP connect to ``WANDB_BASE_URL`` (default ``https://api.wandb.ai``).
   Name resolution and the connect run in a daemon thread joined for at most ``timeout`` seconds, so
   a hanging DNS lookup cannot stretch the wait either.

If either fails the logger is switched to ``offline: true`` in place (and ``log_model`` off: W&B cannot
upload checkpoints offline and Lightning refuses the combination) and a warning says why, where the run
is written and the ``wandb sync`` command that uploads it later. The API key itself is never logged,
stored or put in a message.

For loggers that stay online it bounds W&B's own start-up wait: ``WANDB_INIT_TIMEOUT`` is set to
:data:`WANDB_INIT_TIMEOUT_S` seconds unless the environment already sets it (wandb's default is 90 s).
A server that accepts the connection but does not answer ``wandb.init`` within that time makes
``wandb.init`` fail after the bound instead of hanging.

``LITSEG_WANDB_PROBE_TIMEOUT`` (seconds) overrides the probe's ``timeout``.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://api.wandb.ai"
#: The bound on ``wandb.init``'s wait for the server, in seconds, for loggers that stay online
#: (exported as ``WANDB_INIT_TIMEOUT`` unless already set).
WANDB_INIT_TIMEOUT_S = 60
PROBE_TIMEOUT_ENV = "LITSEG_WANDB_PROBE_TIMEOUT"
OFFLINE_MODES = frozenset({"offline", "disabled", "dryrun"})


# ---------------------------------------------------------------------------------- config walking
def _logger_entries(trainer_cfg: Any) -> list[Any]:
    """The logger entries (``class_path`` + ``init_args``) of a parsed trainer config.

    Same handling as ``litseg.cli._logger_configs``: ``logger`` may be None, a bool, one entry or a list.
    """
    loggers = trainer_cfg.get("logger") if trainer_cfg is not None else None
    if loggers is None or isinstance(loggers, bool):
        return []
    entries = loggers if isinstance(loggers, list) else [loggers]
    return [lg for lg in entries if lg is not None and not isinstance(lg, bool) and "init_args" in lg]


def _is_wandb_logger(class_path: Any) -> bool:
    if not isinstance(class_path, str) or not class_path:
        return False
    module_name, _, name = class_path.rpartition(".")
    if name == "WandbLogger":
        return True
    if not module_name:
        return False
    try:
        import importlib

        from lightning.pytorch.loggers import WandbLogger

        cls = getattr(importlib.import_module(module_name), name)
        return isinstance(cls, type) and issubclass(cls, WandbLogger)
    except Exception:  # noqa: BLE001 - an unimportable class is not ours to judge; the CLI reports it
        return False


# ---------------------------------------------------------------------------------- checks
def _base_url() -> str:
    return (os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")


def _credentials_problem(base_url: str) -> str | None:
    """Why there are no usable credentials for ``base_url``, or None. Never contacts the server and
    never puts the key in the message."""
    key = os.environ.get("WANDB_API_KEY")
    if key:
        try:
            from wandb.sdk.lib.wbauth.validation import check_api_key
        except ImportError:  # other wandb versions: only the presence of a key is checked
            return None
        problem = check_api_key(key)
        return f"WANDB_API_KEY is malformed: {problem}" if problem else None
    token_file = os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
    if token_file:
        return None if os.path.isfile(token_file) else "WANDB_IDENTITY_TOKEN_FILE names no file"
    host = urlsplit(base_url).netloc
    if not host:
        return f"WANDB_BASE_URL {base_url!r} is not a URL"
    try:
        if _netrc_key(base_url):
            return None
    except Exception as err:  # noqa: BLE001 - wandb raises AuthenticationError for a malformed key
        name = type(err).__name__
        return f"the API key in the netrc file for {host} is unusable ({name})"
    return f"no API key (set WANDB_API_KEY or run `wandb login`; none in the netrc file for {host})"


def _netrc_key(base_url: str) -> bool:
    """Whether the netrc file holds a key for ``base_url`` (wandb's own reader, else the stdlib's)."""
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth
    except ImportError:
        read_netrc_auth = None
    if read_netrc_auth is not None:
        return bool(read_netrc_auth(host=base_url))
    import netrc

    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        creds = netrc.netrc(path).authenticators(urlsplit(base_url).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(creds and creds[2])


def _reachability_problem(base_url: str, timeout: float) -> str | None:
    """Why a TCP connection to ``base_url`` fails within ``timeout`` seconds, or None.

    DNS + connect run in a daemon thread: ``socket.create_connection``'s timeout does not cover name
    resolution, which can hang far longer on a machine without network.
    """
    parts = urlsplit(base_url)
    host = parts.hostname
    if not host:
        return f"WANDB_BASE_URL {base_url!r} is not a URL"
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:
        return f"WANDB_BASE_URL {base_url!r} has an invalid port"
    result: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as err:
            result.append(f"cannot connect to {host}:{port}: {err.strerror or err}")

    thread = threading.Thread(target=probe, name="litseg-wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return f"no answer from {host}:{port} within {timeout:g} s"
    return result[0]


def _probe_timeout(timeout: float) -> float:
    value = os.environ.get(PROBE_TIMEOUT_ENV)
    if value:
        try:
            timeout = float(value)
        except ValueError:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"{PROBE_TIMEOUT_ENV}={value!r} is not a number of seconds; using {timeout:g}")
    return max(timeout, 0.1)


def _run_dir(init_args: Any) -> str:
    save_dir = init_args.get("save_dir") or init_args.get("dir") or os.environ.get("WANDB_DIR") or "."
    return os.path.join(os.fspath(save_dir), "wandb", "offline-run-*")


# ---------------------------------------------------------------------------------- entry point
def guard_wandb_loggers(trainer_cfg: Any, timeout: float = 5.0) -> list[str]:
    """Switch online W&B loggers of ``trainer_cfg`` that cannot reach W&B to offline, in place.

    Returns one warning per switched logger (each is also emitted with ``rank_zero_warn``); an empty
    list when nothing was changed. Offline / disabled loggers and non-W&B loggers are left alone.
    """
    mode = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if mode in OFFLINE_MODES:
        return []
    wandb_loggers = [lg for lg in _logger_entries(trainer_cfg)
                     if _is_wandb_logger(lg.get("class_path")) and not (lg.init_args.get("offline") or False)]
    if not wandb_loggers:
        return []
    timeout = _probe_timeout(timeout)
    base_url = _base_url()
    # All loggers talk to the same server: check once.
    reason = _credentials_problem(base_url) or _reachability_problem(base_url, timeout)
    if reason is None:
        os.environ.setdefault("WANDB_INIT_TIMEOUT", str(WANDB_INIT_TIMEOUT_S))
        return []

    from lightning.pytorch.utilities import rank_zero_warn

    warnings: list[str] = []
    for logger in wandb_loggers:
        init_args = logger.init_args
        init_args["offline"] = True
        note = ""
        if init_args.get("log_model"):
            init_args["log_model"] = False
            note = " (log_model turned off: checkpoints cannot be uploaded offline)"
        runs = _run_dir(init_args)
        message = (f"W&B unreachable ({reason}): logging offline to {runs}{note}; "
                   f"upload later with: wandb sync {runs}")
        rank_zero_warn(message)
        warnings.append(message)
    return warnings
