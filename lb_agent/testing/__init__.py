"""Stand-ins for what the agent talks to, for tests and benches: importable wherever skyform is
installed (``from lb_agent.testing.llm_sim import sim_app``). Nothing in the agent imports it."""
