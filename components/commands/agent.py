"""``skyform agent``: a door to the agent's own command line (``lb_agent.cli``).

The controller runs ``python -m lb_agent``; the agent package owns its options, defaults and
exit codes, so the two entry points cannot drift apart.
"""

from __future__ import annotations

from lb_agent.cli import agent

__all__ = ["agent"]
