"""Times Python's prometheus_client rendering the series of an exporter's /metrics body.

Usage: render_python.py < body; prints "p50_ms p99_ms" of generate_latest().
The body is parsed once into metric families; a custom collector yields them, which is what a
user writing the exporter in Python would serve (the cost of building the families from API
data is not included, so this favours Python).
"""
import sys
import time

from prometheus_client.core import CollectorRegistry, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families


class Replay:
    def __init__(self, families):
        self.families = families

    def collect(self):
        for f in self.families:
            m = Metric(f.name, f.documentation, f.type)
            m.samples = f.samples
            yield m


def main():
    families = list(text_string_to_metric_families(sys.stdin.read()))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Replay(families))
    generate_latest(registry)
    times = []
    deadline = time.perf_counter() + 10
    while len(times) < 20 and (len(times) < 3 or time.perf_counter() < deadline):
        t = time.perf_counter()
        generate_latest(registry)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p = lambda q: times[round((len(times) - 1) * q)]
    print(f"{p(0.5):.3f} {p(0.99):.3f}")


if __name__ == "__main__":
    main()
