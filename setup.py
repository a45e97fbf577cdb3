"""The one thing pyproject.toml cannot declare: prefix_aware's optional C helper.

``optional=True``: without a C compiler or Python's headers the install still succeeds, and
prefix_aware runs its pure-Python versions (lb_agent/dataplane/policies/prefix_aware.py): the same
choices, a few microseconds more per request (bench/lb_bench.py prints which one it ran).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("lb_agent.dataplane.policies._prefix_native",
              ["lb_agent/dataplane/policies/_prefix_native.c"], optional=True),
])
