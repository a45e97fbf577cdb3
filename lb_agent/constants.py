"""SkyServe's constants: the single source of truth for defaults, ports and timings.

Values are SkyServe's own (sky/serve/constants.py, sky/resources.py). The parser
(components/) and the agent both import them from here, so a default is written once.
"""

from typing import Final

# Readiness probe (service.readiness_probe)
DEFAULT_READINESS_PATH: Final = "/"
DEFAULT_INITIAL_DELAY_SECONDS: Final = 1200
DEFAULT_READINESS_PROBE_TIMEOUT_SECONDS: Final = 15
ENDPOINT_PROBE_INTERVAL_SECONDS: Final = 10
# After a replica was READY once, failures for this long make it FAILED_PROBING.
CONSECUTIVE_FAILURE_THRESHOLD_SECONDS: Final = 180

# Replica policy
DEFAULT_MIN_REPLICAS: Final = 1

# Autoscaler
AUTOSCALER_QPS_WINDOW_SIZE_SECONDS: Final = 60
AUTOSCALER_DEFAULT_DECISION_INTERVAL_SECONDS: Final = 20
AUTOSCALER_NO_REPLICA_DECISION_INTERVAL_SECONDS: Final = 5
AUTOSCALER_DEFAULT_UPSCALE_DELAY_SECONDS: Final = 300
AUTOSCALER_DEFAULT_DOWNSCALE_DELAY_SECONDS: Final = 1200

# Load balancer
DEFAULT_LOAD_BALANCING_POLICY: Final = "least_load"
LB_MAX_ATTEMPTS: Final = 3
LB_STREAM_TIMEOUT_SECONDS: Final = 120
DEFAULT_DRAIN_SECONDS: Final = 120

# Ports. The public load-balancer port is the first of SkyServe's LB range; the admin API
# (registration, status, metrics) has a port of its own so it never clashes with the
# service's own paths.
LOAD_BALANCER_PORT: Final = 30001
ADMIN_PORT: Final = 20001
LOCAL_LB_PORT: Final = LOAD_BALANCER_PORT

# Versions and replica ids
INITIAL_VERSION: Final = 1
REPLICA_ID_ENV_VAR: Final = "SKYPILOT_SERVE_REPLICA_ID"
# A replica id (``<group>-<index>``, ``local-1``, ``static-0``): it is shown in logs, status
# and metrics, and names the replica in the admin API's paths, so no spaces or control
# characters (lb_agent.contract.replica_id).
REPLICA_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
REPLICA_ID_RULE: Final = ("a replica id is 1 to 200 letters, digits, '.', '_', ':' or '-', "
                          "starting with a letter or digit (such as spot-0)")
NUM_GPUS_PER_NODE_ENV_VAR: Final = "SKYPILOT_NUM_GPUS_PER_NODE"

# Resources
DEFAULT_DISK_SIZE_GB: Final = 256

# Agent data plane (skyform's own; SkyServe has no equivalents)
DEFAULT_AGENT_STATE_FILE: Final = "/var/lib/skyform/agent.db"
LB_CONNECT_TIMEOUT_SECONDS: Final = 5
# First retry backoff; each later one is x1.6, with +-40 % jitter like SkyServe's Backoff,
# but milliseconds instead of SkyServe's 1 s (the retry goes to a different replica).
LB_RETRY_BACKOFF_SECONDS: Final = 0.005
# Request bodies up to this size are kept in memory so they can be resent on a retry.
LB_RETRY_BODY_LIMIT_BYTES: Final = 64 * 1024
LB_MAX_CONNECTIONS_PER_REPLICA: Final = 1024
# Retry-After (seconds) sent with a 503 when no replica is ready.
LB_NO_REPLICA_RETRY_AFTER_SECONDS: Final = 5
# At most this many requests wait (proxy.queue_wait_seconds) for a replica that is starting.
LB_QUEUE_MAX_WAITERS: Final = 1024
# A service that may scale to zero queues requests this long by default (a replica wakes).
LB_SCALE_FROM_ZERO_QUEUE_SECONDS: Final = 300
# Largest WebSocket message relayed to or from a replica (uvicorn's own default for clients).
LB_WEBSOCKET_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
