"""The one thing pyproject.toml cannot declare: the data plane's optional C helpers.

``optional=True``: without a C compiler or Python's headers the install still succeeds, and
each helper's module runs its pure-Python version: prefix_aware
(lb_agent/dataplane/policies/prefix_aware.py: the same choices, a few microseconds more per
request; bench/lb_bench.py prints which one it ran) and the upstream response-head parser
(lb_agent/dataplane/http1.py: the same results, a few microseconds more per request).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("lb_agent.dataplane.policies._prefix_native",
              ["lb_agent/dataplane/policies/_prefix_native.c"], optional=True),
    Extension("lb_agent.dataplane._http1_native",
              ["lb_agent/dataplane/_http1_native.c"], optional=True),
])
