"""skyform's controller agent: load balancer, replica registry, readiness prober and autoscaler.

Self-contained on purpose: it runs on the controller VM and never imports the Pulumi cloud
providers (pulumi-aws, pulumi-gcp, pulumi-kubernetes). It reads the normalized service spec
(the JSON printed by ``skyform validate --json``) from its config file.

Two planes, wired once in ``server.py`` through ``runtime.py``:

* ``dataplane/``: the request path (proxy, upstream client, WebSocket relay, admission,
  affinity, policies);
* ``control/``: replicas and their number (registry, prober, autoscaler, scaler, rollout,
  fleet, deployers).

Beside them: the config file's model (``config.py``), shared constants, the admin API,
metrics, the command line and the process supervisor.
"""
