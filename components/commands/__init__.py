"""The ``skyform`` subcommands, one module each (``validate``, ``synth``, ``local``, ``agent``),
loaded lazily by ``components.cli``."""
