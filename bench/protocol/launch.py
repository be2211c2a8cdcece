"""Talking to `bench`: compose its configs (to know each run's folder before launching) and launch its multiruns."""
from __future__ import annotations

import shlex
import subprocess
import sys
import threading
from pathlib import Path

from omegaconf import DictConfig

from bench import config as bconfig
from bench.config import CONF_DIR
from bench.errors import ConfigError
from bench.protocol.overrides import override_key

EXIT_PREEMPTED = 75  # bench.cli's code for a SIGTERM'd run (kept equal; see bench/cli.py)
SEARCHPATH_KEY = "hydra.searchpath"  # Hydra's extra config folders: composing needs them too


class ProtocolError(RuntimeError):
    """A stage could not run (a multirun exited with an error, a result file was refused)."""


class Preempted(RuntimeError):
    """A run was preempted (exit 75): the same command resumes the protocol."""


class Bench:
    """Composes bench configs (to know each run's folder) and launches bench multiruns."""

    def __init__(self, dry_run: bool = False):
        bconfig.register_resolvers()
        self.dry_run = dry_run
        self._lock = threading.Lock()
        self._print_lock = threading.Lock()
        self.children: set[subprocess.Popen] = set()  # running multiruns (SIGTERM is passed on to them)
        self.stopping = threading.Event()  # set by a forwarded signal: launch nothing more

    def forward(self, signum: int) -> None:
        """Pass a signal to the running multiruns: a SIGTERM'd run checkpoints and exits 75, and so does the protocol."""
        self.stopping.set()
        for child in list(self.children):
            if child.poll() is None:
                child.send_signal(signum)

    def compose(self, overrides: list[str], with_hydra: bool = False) -> DictConfig:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if not with_hydra:  # hydra.* settings (launcher, sweeper) never change a run's config; the search
            # path does (a task or method kept in the user's own config folder), as it does for `bench`
            overrides = [o for o in overrides if not override_key(o).startswith("hydra")
                         or override_key(o) == SEARCHPATH_KEY]
        with self._lock:  # Hydra's global state: one compose at a time (cells may run side by side)
            GlobalHydra.instance().clear()
            try:
                with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                    return compose("config", overrides=overrides, return_hydra_config=with_hydra)
            except (HydraException, OmegaConfBaseException) as err:
                raise ConfigError(f"bench config with {' '.join(overrides)}: {err}") from None
            finally:
                GlobalHydra.instance().clear()

    def run_dir(self, overrides: list[str]) -> Path:
        return bconfig.run_dir(self.compose(overrides))

    def say(self, line: str) -> None:
        with self._print_lock:
            print(f"protocol: {line}", flush=True)

    def multirun(self, overrides: list[str]) -> None:
        cmd = [sys.executable, "-m", "bench.cli", "-m", *overrides]
        self.say(("would launch: " if self.dry_run else "launch: ") + shlex.join(["bench", "-m", *overrides]))
        if self.dry_run:
            return
        if self.stopping.is_set():  # side-by-side cells must not start new stages after a preemption
            raise Preempted("the protocol was signalled to stop; the same command resumes")
        child = subprocess.Popen(cmd)
        with self._print_lock:
            self.children.add(child)
        try:
            code = child.wait()
        finally:
            with self._print_lock:
                self.children.discard(child)
        if code == EXIT_PREEMPTED:
            raise Preempted(f"a run was preempted (exit {code}); the same command resumes")
        if code != 0:
            raise ProtocolError(f"bench multirun exited with {code}: {shlex.join(['bench', '-m', *overrides])}")
