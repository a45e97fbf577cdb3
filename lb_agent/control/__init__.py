"""The control plane: which replicas exist, and how many there should be.

It owns the replica registry and its SQLite store, readiness probes, request arrivals for
QPS autoscaling, the SkyServe autoscaler, the scaler loop, rolling updates, the fleet the
agent writes to its stack, and the deployers that apply each change (local processes, or a
targeted ``pulumi up``). It never sits on the request path.
"""
