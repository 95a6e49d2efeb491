"""Start the real server (`python -m server`, as `make run` does) on a free loopback port.

One launcher for the tests, `make bench` and `make soak`: the process, its log file, and a wait
until `/health` answers 200 (failing early, with the log, if the process exits first).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(log_dir: Path, extra_env: dict[str, str] | None = None, wait_healthy: bool = True,
                 timeout: float = 300) -> ServerProcess:
    """Launch the server with the embedded model (unless `extra_env` names another MODEL_PATH)."""
    port = free_port()
    # No load balancer watches these servers: stopping one need not wait out DRAIN_DELAY_S (5 s)
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "MODEL_PATH": str(MODEL_DIR),
           "DRAIN_DELAY_S": "0"}
    env.update(extra_env or {})
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log_path, env)
    if not wait_healthy:
        return server
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()[-4000:]}")
        try:
            if requests.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except requests.RequestException:  # not listening yet, or busy loading
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"server not healthy in {timeout:.0f} s:\n{server.log()[-4000:]}")
