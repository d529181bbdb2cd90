"""The numbered SQL migrations (``NNN_name.sql``), shipped as package data.

A package only so that the ``.sql`` files travel inside the wheel: ``infra.migrate``
reads them with ``importlib.resources``, wherever the service is installed.
"""
