"""The jinja2 start-up templates: user data, cloud-init and the replica and controller scripts.

A package only so that a built wheel carries the ``*.j2`` files beside the code and
``components.startup`` reads them with ``importlib.resources``, from a checkout or an install
alike.
"""
