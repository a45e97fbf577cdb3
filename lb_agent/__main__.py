"""``python -m lb_agent``: run the agent (the same command as ``skyform agent``)."""

from __future__ import annotations

import sys

from lb_agent.cli import agent

if __name__ == "__main__":
    sys.exit(agent.main(prog_name="python -m lb_agent"))
