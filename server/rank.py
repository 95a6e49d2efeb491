"""A tensor-parallel rank other than 0 (`python -m server` runs this when RANK > 0): no HTTP, its share
of the model, and the forwards rank 0 announces (server/engine/follower.py).

It exits 0 when rank 0 says stop (rank 0 drains first), and non-zero when rank 0 is lost or a
collective fails, so that Kubernetes restarts it; SIGTERM and SIGINT are left to rank 0, which
stops every rank once its own requests are done.
"""

from __future__ import annotations

import logging
import os
import signal

from server.config import Settings
from server.engine.follower import Follower
from server.engine.lockstep import Channel, RankLost
from server.model import loader, ranks

log = logging.getLogger("inferbox.rank")


def serve(settings: Settings) -> int:
    """Follow rank 0 until it stops; the process's exit status."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s rank {settings.rank} %(name)s: %(message)s")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: log.info("signal %d: waiting for rank 0 to stop", signum))
    s = settings
    try:
        group = ranks.join(s)
        loaded = loader.load(settings, group)
        log.info("rank %d of %d (pid %d): model loaded; following rank 0", s.rank, s.tensor_parallel,
                 os.getpid())
        follower = Follower(loaded, Channel(group.control))
        follower.run()
    except RankLost as exc:
        log.critical("rank %d stops: %s", s.rank, exc)
        return 1
    except Exception:
        log.exception("rank %d failed", s.rank)
        return 1
    log.info("rank %d: rank 0 stopped; %d forwards run", s.rank, follower.forwards)
    ranks.leave()
    return 0
