"""
The node's Prometheus metrics (prometheus_client), all named C{hpchat_*}.

They live in one registry of their own so that /metrics shows exactly these plus the process
collector, and tests can read them without touching the global default registry.
"""

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _counting(counter):
    """
    A function that adds one to C{counter} for the given label values; each labelled child
    is looked up once (C{labels()} takes a lock and builds a key on every call).
    """
    children: dict = {}

    def count(*values) -> None:
        child = children.get(values)
        if child is None:
            child = children[values] = counter.labels(*(str(v) for v in values))
        child.inc()

    return count


class Tally:
    """
    A counter by label values for the hot path (several counts per message), kept in a plain
    dict and turned into its samples at scrape time: a prometheus_client counter's increment
    takes a lock and checks its state on every call. Counted from the reactor thread only.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 registry: CollectorRegistry):
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._counts: dict[tuple, int] = {}
        registry.register(self)

    def __call__(self, *values: object) -> None:
        counts = self._counts
        counts[values] = counts.get(values, 0) + 1

    def collect(self) -> Iterator[Metric]:
        samples: dict[tuple[str, ...], int] = {}
        for values, count in list(self._counts.items()):
            labels = tuple(str(v) for v in values)
            samples[labels] = samples.get(labels, 0) + count
        family = CounterMetricFamily(self._name, self._documentation,
                                     labels=self._labelnames)
        for labels, count in samples.items():
            family.add_metric(labels, count)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)


#: countRequest(route, status) and countCommitted(kind), for the hot path.
countRequest = Tally("hpchat_http_requests", "HTTP requests answered, by route and status",
                     ("route", "status"), REGISTRY)
sseStreams = Gauge("hpchat_sse_streams_open", "Server-Sent Events streams open",
                   registry=REGISTRY)
sseEvents = Counter("hpchat_sse_events_written", "Events written to Server-Sent Events streams "
                    "(message, notification, typing, read; not heartbeats)", registry=REGISTRY)
waitingPolls = Gauge("hpchat_waiting_polls", "Long-polls currently waiting", registry=REGISTRY)
redirects = Counter("hpchat_redirects", "Requests redirected to the owner of their group",
                    registry=REGISTRY)
countCommitted = Tally("hpchat_messages_committed", "Events made durable, by stream kind",
                       ("kind",), REGISTRY)
persistBatchSize = Histogram("hpchat_persist_batch_size", "Events per persisted batch",
                             buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
                             registry=REGISTRY)
persistLatency = Histogram("hpchat_persist_seconds", "Time to make one batch durable",
                           buckets=_FAST, registry=REGISTRY)
pendingEvents = Gauge("hpchat_persist_pending", "Events waiting to become durable",
                      registry=REGISTRY)
persistInterval = Gauge("hpchat_persist_interval_seconds",
                        "Seconds the last batch made the next wait to start (the pacing)",
                        registry=REGISTRY)
storeErrors = Counter("hpchat_store_errors", "Failed store calls, by kind", ["kind"],
                      registry=REGISTRY)
overloaded = Counter("hpchat_overloaded", "Sends refused because too many were pending",
                     registry=REGISTRY)
streamsInMemory = Gauge("hpchat_streams_in_memory", "Streams held in memory", registry=REGISTRY)
groupsOwned = Gauge("hpchat_groups_owned", "Chat groups this node serves", registry=REGISTRY)
claims = Counter("hpchat_group_claims", "Group claims won in etcd (for any node)",
                 registry=REGISTRY)
releases = Counter("hpchat_group_releases", "Groups handed off by this node", registry=REGISTRY)
keepaliveFailures = Counter("hpchat_lease_keepalive_failures",
                            "Lease keepalives that failed or timed out", registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
nsqEvents = Counter("hpchat_nsq", "NSQ client events (published, consumed, finished, "
                    "requeued, malformedFrames, ...)", ["event"], registry=REGISTRY)
malformedNotifications = Counter("hpchat_notifications_malformed",
                                 "Notification bodies that were not valid (FINed)",
                                 registry=REGISTRY)
limited = Counter("hpchat_limited", "Requests or connections refused by a [limits] limit, by "
                  "limit (head_bytes, headers, target_bytes, body_bytes, head_timeout, "
                  "body_timeout, connections, sends, typing, polls_per_user, ...)", ["limit"],
                  registry=REGISTRY)
countLimited = _counting(limited)
social = Counter("hpchat_social", "Social feature events, by event (send_blocked, typing_blocked, "
                 "notification_blocked, block_lookups, presence_queries, ...)", ["event"],
                 registry=REGISTRY)
countSocial = _counting(social)
loopFailures = Counter("hpchat_loop_failures", "Exceptions caught in a periodic loop's body, by "
                       "loop (the loop goes on)", ["loop"], registry=REGISTRY)
outboxPending = Gauge("hpchat_outbox_pending", "Outbox notifications of this node's groups not "
                      "yet published and marked done: being published, or left by a failed "
                      "publish for the next sweep", registry=REGISTRY)
notificationsHeld = Gauge("hpchat_notifications_held", "Notifications taken from nsqd and not "
                          "yet durable in their inbox (delivered or retried)", registry=REGISTRY)
