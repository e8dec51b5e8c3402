"""Parses a /metrics body with Python's prometheus_client and prints its samples as JSON.

Usage: parse.py text|openmetrics < body
The OpenMetrics parser is strict: it rejects a body without '# EOF', bad escapes, counters
without _total samples, and so on.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families as text_families


def main():
    fmt = sys.argv[1]
    body = sys.stdin.read()
    families = om_families(body) if fmt == "openmetrics" else text_families(body)
    out = []
    for family in families:
        for s in family.samples:
            out.append({"family": family.name, "type": family.type, "name": s.name,
                        "labels": s.labels, "value": s.value})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
