"""skyform's controller agent: load balancer, replica registry, readiness prober and autoscaler.

Self-contained on purpose: it runs on the controller VM and never imports the Pulumi cloud
providers (pulumi-aws, pulumi-gcp, pulumi-kubernetes). It reads the normalized service spec
(the JSON printed by ``skyform validate --json``) from its config file.
"""
