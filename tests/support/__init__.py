"""Helpers shared by the test modules (fixtures live in the conftest files, helpers here;
no test module imports another).

- :mod:`tests.support.waits`: :func:`~tests.support.waits.eventually` (every poll of a
  test goes through it and fails with what it last saw) and the drained-consumer waits,
  the only "nothing more will arrive" check.
- :mod:`tests.support.metrics`: metric values read through the registry's public API.
- :mod:`tests.support.events`: the README's event and variants of it as bytes or documents.
- :mod:`tests.support.api`: the admin token the in-process apps are given, auth headers.
- :mod:`tests.support.service`: the service in this event loop (a worker built by the
  runtime, the HTTP app), prepared events, publishing and counting.
- :mod:`tests.support.databases`: fresh test databases.
- :mod:`tests.support.processes`: ``auditlog`` as a subprocess: start, wait ready, stop.
- :mod:`tests.support.clock`: a clock that moves only when a test moves it.
- :mod:`tests.support.workers`: ``auditlog pipeline`` processes for fault tests (metrics
  scraped), stall measurement, publishing retried until every event is acknowledged.
- :mod:`tests.support.nats_cluster`: a NATS cluster of local nodes that can be killed -9.
- :mod:`tests.support.pg_standby`: a PostgreSQL primary with a synchronous standby; the
  primary killed -9, the standby promoted.
"""
