"""The real Agent with the scripted shelf engine (tests/shelf_engine.py) in its own process,
so a test can SIGKILL it:

    python tests/shelf_driver.py CONFIG CANS [MAX_FRAMES [DIE_AFTER_JOURNAL]]

CANS is the cycled script of can counts ("4,4,1,1"); MAX_FRAMES 0 runs until killed.
DIE_AFTER_JOURNAL K > 0: the process dies (os._exit, no cleanup, as a SIGKILL) right after
the K-th frame whose events were journaled, before they reach the spool."""
from __future__ import annotations

import logging
import os
import sys

from edge_agent.agent import Agent, RunLimits
from edge_agent.settings import load_settings
from edge_agent.shelf import Shelf
from shelf_engine import ScriptedShelf


def main() -> int:
    config, cans = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    frames = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    die_after = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if die_after:
        commit, journaled = Shelf.commit, []

        def commit_then_die(self, pending=()):
            commit(self, pending)
            if pending:
                journaled.append(1)
                if len(journaled) == die_after:
                    os._exit(137)

        Shelf.commit = commit_then_die
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    agent = Agent(load_settings(config, env={}), RunLimits(max_frames=frames, drain_timeout=30),
                  engine=ScriptedShelf(cans, cycle=True))
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
