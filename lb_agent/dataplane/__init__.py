"""The data plane: the request path from a client to a replica and back.

It owns the public ASGI proxy, the shared HTTP/1.1 upstream client, the WebSocket relay,
admission (API keys, rate limits), session and prefix affinity, the load-balancing policies
(with prefix_aware's optional C helper beside its only user) and the hostile-peer guards.
It reads the control plane's view of the replicas; it never launches or scales anything.
"""
