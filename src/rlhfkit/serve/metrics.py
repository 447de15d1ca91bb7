"""Prometheus metrics of the gateway (prometheus-client), served at /metrics. Each app has its own registry, so
several apps in one process (tests) never share counts.

  rlhfkit_serve_requests_total{route, checkpoint, endpoint, status}      answered requests (status: ok, error, ...)
  rlhfkit_serve_tokens_total{route, checkpoint, kind}                     prompt and completion tokens
  rlhfkit_serve_request_seconds{route, checkpoint}                        latency, arrival to last byte (histogram)
  rlhfkit_serve_time_to_first_token_seconds{route, checkpoint}            arrival to the first generated token
  rlhfkit_serve_rate_limited_total{limit}                                 429s (limit: requests or tokens)
  rlhfkit_serve_refused_total{reason}                                     other 4xx (reason: the status code)
  rlhfkit_serve_batch_size{checkpoint}                                    requests per generation batch (histogram)
  rlhfkit_serve_in_flight{route}                                          requests being answered now
  rlhfkit_serve_reloads_total{route}                                      checkpoint switches by hot reload
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rlhfkit_serve_requests", "answered requests", ["route", "checkpoint", "endpoint", "status"], registry=r
        )
        self.tokens = Counter("rlhfkit_serve_tokens", "tokens", ["route", "checkpoint", "kind"], registry=r)
        self.latency = Histogram(
            "rlhfkit_serve_request_seconds",
            "arrival to last byte",
            ["route", "checkpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "rlhfkit_serve_time_to_first_token_seconds",
            "arrival to the first generated token",
            ["route", "checkpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter("rlhfkit_serve_rate_limited", "requests refused with 429", ["limit"], registry=r)
        self.refused = Counter("rlhfkit_serve_refused", "requests refused with another 4xx", ["reason"], registry=r)
        self.batch_size = Histogram(
            "rlhfkit_serve_batch_size", "requests per batch", ["checkpoint"], buckets=BATCH_BUCKETS, registry=r
        )
        self.in_flight = Gauge("rlhfkit_serve_in_flight", "requests being answered", ["route"], registry=r)
        self.reloads = Counter("rlhfkit_serve_reloads", "checkpoint switches", ["route"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
