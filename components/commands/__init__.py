"""The ``skyform`` subcommands, one module each (``validate``, ``synth``, ``local``, ``status``,
``logs``, and ``agent``, a door to ``lb_agent.cli``), loaded lazily by ``components.cli``;
``common`` holds what they share (file errors, ``K=V`` options), ``localstate`` and
``service_view`` how ``status``/``logs`` find a running service."""
