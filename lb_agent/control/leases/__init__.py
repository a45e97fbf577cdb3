"""Lease stores of the leader lease (lb_agent/control/leadership.py), one module each."""
