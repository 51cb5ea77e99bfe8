"""Polling the watched tasks: a pure schedule (:mod:`.schedule`) and the shell that performs it.

:mod:`.schedule` decides who is polled when and with which request, without
I/O; :mod:`.poller` sends the requests and feeds the answers to the schedule
and the tracker; :mod:`.discovery` runs the ``[[watch.discover]]`` rules;
:mod:`.batching` groups commits; :mod:`.shard` splits the tasks between
replicas.
"""

from monitor.polling.discovery import rule_matches
from monitor.polling.poller import Poller, utc_now
from monitor.polling.shard import Shard

__all__ = ["Poller", "Shard", "rule_matches", "utc_now"]
