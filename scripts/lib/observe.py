"""What scripts/bench and scripts/drill read from the stack: the Collector's span
counters and the spans Jaeger stored.

  observe.py collector METRICS_URL
      accepted refused sent send_failed (space-separated; Collector v0.161 names, no _total)
  observe.py collector-total SNAPSHOTS_FILE
      the same four, summed over a file of such lines taken over time; a line `restart`
      marks a Collector started again (its next line counts from zero)
  observe.py jaeger-count QUERY_URL INSTANCE_PREFIX START END
      spans stored whose process's service.instance.id starts with INSTANCE_PREFIX
  observe.py jaeger-dump QUERY_URL INSTANCE_PREFIX START END FILE [SERVICE...]
      the same spans, one JSON line each (span id, trace id, name, instance), into FILE
"""
import json
import sys
import time
import urllib.error
import urllib.request

# Loopback only: a proxy from the environment must not see these requests.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SLICE_SECONDS = 2


def get(url, timeout=60):
    with OPENER.open(url, timeout=timeout) as response:
        return response.read()


def metric_sum(text, name, label=""):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " ") and label in line:
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return total


def collector_counters(url):
    text = get(url).decode()
    jaeger = 'exporter="otlp_grpc/jaeger"'
    return (int(metric_sum(text, "otelcol_receiver_accepted_spans")),
            int(metric_sum(text, "otelcol_receiver_refused_spans")),
            int(metric_sum(text, "otelcol_exporter_sent_spans", jaeger)),
            int(metric_sum(text, "otelcol_exporter_send_failed_spans", jaeger)))


def collector_total(path):
    """Sums the counters over snapshots taken in turn; a line `restart` marks a Collector
    that was started again, whose next snapshot counts from zero. (A decrease alone
    cannot tell: a restarted Collector may already have passed its old count when read.)"""
    totals = [0, 0, 0, 0]
    previous = None
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        if line == "restart":
            previous = [0, 0, 0, 0]
            continue
        row = [int(v) for v in line.split()]
        if previous is not None:
            for i in range(4):
                # Lower than before without a marker: a restart nobody announced.
                totals[i] += row[i] - previous[i] if row[i] >= previous[i] else row[i]
        previous = row
    return totals


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def stored_spans(base, prefix, start, end, services):
    """Every span Jaeger stored in [start, end] from a process whose service.instance.id
    starts with `prefix`. Traces are read per service in 2-second slices (an answer for a
    whole minute would be hundreds of megabytes); a span met twice counts once."""
    spans = {}
    for service in services:
        t = int(start)
        while t < end:
            url = (f"{base}/api/v3/traces?query.service_name={service}"
                   f"&query.start_time_min={rfc3339(t)}&query.start_time_max={rfc3339(t + SLICE_SECONDS)}"
                   f"&query.num_traces=100000")
            t += SLICE_SECONDS
            try:
                answer = json.loads(get(url))
            except urllib.error.HTTPError as e:
                if e.code == 404:  # no trace in this slice
                    continue
                raise
            for resource in answer.get("result", {}).get("resourceSpans", []):
                attributes = {a["key"]: a["value"].get("stringValue")
                              for a in resource["resource"].get("attributes", [])}
                instance = attributes.get("service.instance.id") or ""
                if not instance.startswith(prefix):
                    continue
                for scope in resource.get("scopeSpans", []):
                    for span in scope.get("spans", []):
                        spans[span["spanId"]] = (span["traceId"], span["name"], instance)
    return spans


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "collector":
        print(*collector_counters(args[0]))
    elif command == "collector-total":
        print(*collector_total(args[0]))
    elif command == "jaeger-count":
        print(len(stored_spans(args[0], args[1], float(args[2]), float(args[3]), ["gateway"])))
    elif command == "jaeger-dump":
        services = args[5:] or ["gateway"]
        spans = stored_spans(args[0], args[1], float(args[2]), float(args[3]), services)
        with open(args[4], "a") as out:
            for span_id, (trace_id, name, instance) in spans.items():
                out.write(json.dumps({"span": span_id, "trace": trace_id, "name": name,
                                      "instance": instance}) + "\n")
        print(len(spans))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
