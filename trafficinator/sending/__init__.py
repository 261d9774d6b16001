"""The sending half of a run: per-target HTTP senders (gevent) and their telemetry.

Plain Python: nothing here imports Django, so a loader process can import it right
after gevent's monkey-patching. Import the modules you need explicitly
(``trafficinator.sending.sender``, ``trafficinator.sending.telemetry``,
``trafficinator.sending.clients``).
"""
