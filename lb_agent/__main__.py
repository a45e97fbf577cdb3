"""``python -m lb_agent --config FILE``: run the agent (same as ``skyform agent``)."""

from __future__ import annotations

import sys

from components.commands.agent import agent

if __name__ == "__main__":
    sys.exit(agent.main(prog_name="python -m lb_agent"))
