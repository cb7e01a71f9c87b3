"""scripts/drill's figures: one record per drill (JSON line), its one-line summary, the
Markdown table and the verdict.

  drill_report.py record DRILL_DIR DRILL ORDERS FINAL PENDING UNKEYED DLQ LAG POISON FAULT_S STOPS SIGTERMS
  drill_report.py line RECORDS        the last drill's line
  drill_report.py table RECORDS RATE FAULT_SECONDS
  drill_report.py verdict RECORDS     exit 1 if an order was lost or doubled, or a span gap has no name
  drill_report.py drain DRILL_DIR WORKERS ORDERS STARTED READY WORKER_TICKS OS_TICKS STACK_TICKS CLK_TCK
                                      one drain measure (a JSON line) from DRILL_DIR/final.txt
  drill_report.py drain-table DRAINS  the drain measures as a Markdown table
"""
import glob
import json
import os
import re
import sys
from collections import Counter, defaultdict

SHUTDOWN = re.compile(r"telemetry shut down(?P<fields>.*)")
FIELD = re.compile(r"(\w+)=(\S+)")


def observe_total(path):
    sys.path.insert(0, os.path.dirname(__file__))
    from observe import collector_total
    return collector_total(path)


def lives(drill_dir):
    """Each process life's log (NAME-LIFE.log) and its shutdown figures; None when the
    life ended without the line (SIGKILL)."""
    result = {}
    for path in sorted(glob.glob(os.path.join(drill_dir, "*-[0-9]*.log"))):
        life = os.path.basename(path)[:-4]
        figures = None
        for line in open(path, errors="replace"):
            match = SHUTDOWN.search(line)
            if match:
                fields = dict(FIELD.findall(match.group("fields")))
                recorded = int(fields.get("spans_recorded", 0))
                figures = {
                    "recorded": recorded,
                    "exported": int(fields.get("spans_exported", recorded)),
                    "dropped": int(fields.get("spans_dropped", 0)),
                    "export_failed": int(fields.get("spans_export_failed", 0)),
                    "flushed": fields.get("flushed") == "true",
                }
        result[life] = figures
    return result


def record(args):
    (drill_dir, drill, orders, final, pending, unkeyed, dlq, lag, poison, fault_s, stops, sigterms) = args
    loadgen = json.load(open(os.path.join(drill_dir, "loadgen.json")))
    spans = {}
    jaeger_path = os.path.join(drill_dir, "jaeger-spans.jsonl")
    if os.path.exists(jaeger_path):
        for line in open(jaeger_path):
            span = json.loads(line)
            spans[span["span"]] = span
    stored_by_life = Counter()
    for span in spans.values():
        # service.instance.id is PREFIX-NAME-LIFE; the life's log is NAME-LIFE.log.
        stored_by_life[span["instance"].split(f"-{drill}-", 1)[-1]] += 1
    # An outcome reported more than once for one order: the record was handled again
    # (redelivered after a worker died before committing, or republished) or the call
    # retried. Counted on the order-service's side, whose spans survive a worker's SIGKILL.
    # Only the load's orders: a poison record's unknown order is re-checked by design.
    load_traces = {span["trace"] for span in spans.values() if f"-{drill}-loadgen-" in span["instance"]}
    completes = defaultdict(int)
    for span in spans.values():
        if (span["name"] == "order.v1.OrderService/CompleteOrder" and f"-{drill}-order-service-" in span["instance"]
                and span["trace"] in load_traces):
            completes[span["trace"]] += 1
    redeliveries = sum(n - 1 for n in completes.values() if n > 1)
    peak_rss = {}
    rss_path = os.path.join(drill_dir, "peak-rss.txt")
    if os.path.exists(rss_path):
        for line in open(rss_path):
            parts = line.split()
            if len(parts) == 2:
                peak_rss[parts[0]] = int(parts[1])
    accepted, refused, sent, send_failed = observe_total(os.path.join(drill_dir, "collector.txt"))
    orders_figures = loadgen.get("orders") or {}
    statuses = {k: v for k, v in loadgen["create"]["status_codes"].items() if k != "201"}
    poll_errors = {k: v for k, v in (loadgen.get("poll") or {}).get("status_codes", {}).items() if k != "200"}
    print(json.dumps({
        "drill": drill,
        "fault_seconds": int(fault_s),
        "accepted": orders_figures.get("created", 0),
        "stored": int(orders),
        "final": int(final),
        "pending": int(pending),
        "lost": max(orders_figures.get("lost", 0), int(pending)),
        "lost_orders": orders_figures.get("lost_orders", []),
        "unkeyed": int(unkeyed),
        "doubled": int(unkeyed),
        "retries": (loadgen.get("idempotent") or {}).get("retries", 0),
        "gave_up": (loadgen.get("idempotent") or {}).get("gave_up", 0),
        "overflow": (loadgen.get("open_loop") or {}).get("overflow", 0),
        "post_errors": statuses,
        "poll_errors": poll_errors,
        "redeliveries": redeliveries,
        "dead_letters": None if dlq == "null" else int(dlq),
        "poison_sent": int(poison),
        "lag": None if lag == "null" else int(lag),
        "lives": lives(drill_dir),
        "stored_by_life": dict(stored_by_life),
        "collector": {"accepted": accepted, "refused": refused, "sent": sent, "send_failed": send_failed},
        "jaeger_stored": len(spans),
        "peak_rss_kib": peak_rss,
        "stops": stops.strip(" ,"),
        "sigterms": sigterms.strip(" ,"),
    }))


def span_account(r):
    """recorded, accepted, stored, and every difference with its name; `unexplained` is
    the part no name covers."""
    known = {life: f for life, f in r["lives"].items() if f is not None}
    killed = [life for life, f in r["lives"].items() if f is None]
    recorded = sum(f["recorded"] for f in known.values())
    exported = sum(f["exported"] for f in known.values())
    stored_killed = sum(r["stored_by_life"].get(life, 0) for life in killed)
    c = r["collector"]
    names, unexplained = [], 0
    for life, f in sorted(known.items()):
        if f["dropped"]:
            queue = f["dropped"] - f["export_failed"]
            names.append(f"{f['dropped']} dropped by {life} (queue full or unflushed {queue}, export failed {f['export_failed']})")
        gap = f["recorded"] - f["exported"] - f["dropped"]
        if gap:
            unexplained += abs(gap)
            names.append(f"{gap} recorded by {life} neither exported nor counted as dropped")
    for life in killed:
        names.append(f"{life} SIGKILLed: no count of its own ({r['stored_by_life'].get(life, 0)} of its spans stored; "
                     "what it had queued died with it)")
    drill = r["drill"]
    g_collector = exported + stored_killed - c["accepted"]
    if g_collector:
        if drill == "collector-kill" and g_collector > 0:
            names.append(f"{g_collector} exported to the Collector but not counted as accepted (accepted between the last count and its SIGKILL)")
        elif killed and g_collector < 0:
            names.append(f"{-g_collector} accepted from the killed processes but not stored")
        else:
            unexplained += abs(g_collector)
            names.append(f"{g_collector} exported but not accepted by the Collector (unexplained)")
    g_sent = c["accepted"] - c["sent"]
    if g_sent:
        if drill == "collector-kill" and g_sent > 0:
            names.append(f"{g_sent} accepted by the Collector and lost in its memory (batch, sending queue) when it was SIGKILLed")
        else:
            unexplained += abs(g_sent)
            names.append(f"{g_sent} accepted by the Collector, not sent to Jaeger (send failed {c['send_failed']})")
    g_stored = c["sent"] - r["jaeger_stored"]
    if g_stored:
        if drill == "jaeger-kill" and g_stored > 0:
            names.append(f"{g_stored} sent to Jaeger and lost when it was SIGKILLed (in its own batch, or stored after the last count before the kill: its store is in memory)")
        elif g_stored < 0 and killed:
            pass  # the killed lives' stored spans were counted on both sides
        else:
            unexplained += abs(g_stored)
            names.append(f"{g_stored} sent to Jaeger, not stored (unexplained)")
    recorded_text = f"{recorded}" + (f" + {len(killed)} killed" if killed else "")
    return recorded_text, c["accepted"], r["jaeger_stored"], names, unexplained


def statuses(codes):
    return ", ".join(f"{k}×{v}" for k, v in sorted(codes.items())) or "none"


def line(r):
    recorded, accepted, stored, names, unexplained = span_account(r)
    return (f"{r['drill']}: accepted {r['accepted']}, stored {r['stored']}, final {r['final']}, "
            f"lost {r['lost']}, doubled {r['doubled']}, redeliveries {r['redeliveries']}, "
            f"dead letters {r['dead_letters']}, POST errors {statuses(r['post_errors'])} "
            f"(retried {r['retries']}, gave up {r['gave_up']}), spans {recorded} / {accepted} / {stored}"
            + (f" ({'; '.join(names)})" if names else "")
            + (f"; SIGTERM (exit status/time to exit): {r['sigterms']}" if r["sigterms"] else ""))


def table(records, rate, fault_seconds):
    print(f"Open loop at {rate} POST/s, faults of {fault_seconds} s (restarts after the stated time).\n")
    print("| drill | accepted (2xx) | stored | final | **lost** | doubled | redeliveries | dead-lettered | "
          "POST errors during the run (retried / gave up) | spans recorded / accepted / stored | difference named |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|:--|:--|:--|")
    for r in records:
        recorded, accepted, stored, names, unexplained = span_account(r)
        print(f"| {r['drill']} | {r['accepted']} | {r['stored']} | {r['final']} | **{r['lost']}** | {r['doubled']} | "
              f"{r['redeliveries']} | {r['dead_letters']} | {statuses(r['post_errors'])} ({r['retries']} / {r['gave_up']}) | "
              f"{recorded} / {accepted} / {stored} | {'; '.join(names) or 'none'} |")


def verdict(records):
    bad = []
    for r in records:
        *_, unexplained = span_account(r)
        if r["lost"]:
            bad.append(f"{r['drill']}: {r['lost']} orders lost: {r['lost_orders'][:5]}")
        if r["doubled"]:
            bad.append(f"{r['drill']}: {r['doubled']} orders doubled")
        if r["accepted"] != r["stored"] and r["gave_up"] == 0:
            bad.append(f"{r['drill']}: {r['accepted']} accepted but {r['stored']} stored")
        if r["poison_sent"] and r["dead_letters"] != r["poison_sent"]:
            bad.append(f"{r['drill']}: {r['poison_sent']} poison records sent, {r['dead_letters']} dead-lettered")
        for part in filter(None, (p.strip() for p in r["sigterms"].split(","))):
            name, result = part.rsplit(" ", 1)
            if not result.startswith("0/"):
                bad.append(f"{r['drill']}: {name} exited {result} after SIGTERM (expected 0 within its deadline)")
        for life, figures in r["lives"].items():
            if figures is not None and not figures["flushed"]:
                bad.append(f"{r['drill']}: {life} did not flush its spans at shutdown")
        if unexplained:
            bad.append(f"{r['drill']}: {unexplained} spans unaccounted for")
    for b in bad:
        print(f"drill: FAILED {b}", file=sys.stderr)
    sys.exit(1 if bad else 0)


def drain(args):
    """Orders final per second while W workers empty a backlog. `final.txt` holds
    "UNIX_SECONDS FINAL_COUNT" samples every 0.5 s from the moment the workers were started.
    Two rates: over the whole drain from the start command (start-up and the group's first
    assignment included), and the steady one between 10 % and 90 % of the backlog final."""
    drill_dir, workers, orders, started, ready, worker_ticks, os_ticks, stack_ticks, clk_tck = args
    orders, started, ready, clk_tck = int(orders), float(started), float(ready), int(clk_tck)
    samples = [(float(t), int(n)) for t, n in (line.split() for line in open(os.path.join(drill_dir, "final.txt")))]
    final = samples[-1][1] if samples else 0
    done_at = samples[-1][0] if samples else started

    def first_reaching(count):
        return next((t for t, n in samples if n >= count), None)

    low, high = first_reaching(orders * 0.1), first_reaching(orders * 0.9)
    steady = (orders * 0.8) / (high - low) if low is not None and high is not None and high > low else None
    whole = done_at - started
    print(json.dumps({
        "workers": int(workers),
        "orders": orders,
        "final": final,
        "start_to_ready_s": round(ready - started, 2),
        "drain_s": round(whole, 2),
        "rate_whole": round(final / whole, 1) if whole > 0 else None,
        "rate_steady": round(steady, 1) if steady else None,
        "worker_cores": round(int(worker_ticks) / clk_tck / whole, 2) if whole > 0 else None,
        "order_service_cores": round(int(os_ticks) / clk_tck / whole, 2) if whole > 0 else None,
        "stack_cores": round(int(stack_ticks) / clk_tck / whole, 2) if whole > 0 else None,
    }))


def drain_table(path):
    rows = [json.loads(line) for line in open(path)]
    print("| workers | orders | all final after (s) | orders final/s, whole drain | orders final/s, 10 %→90 % "
          "| workers' CPU (cores) | order-service CPU (cores) | Kafka + Collector + Jaeger CPU (cores) |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['workers']} | {r['final']} / {r['orders']} | {r['drain_s']} | {r['rate_whole']} "
              f"| {r['rate_steady']} | {r['worker_cores']} | {r['order_service_cores']} | {r.get('stack_cores')} |")
    if not all(r["final"] == r["orders"] for r in rows):
        print("\nnot every order became final: see final.txt in each drain-ROUND-WORKERS directory")
        sys.exit(1)


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "record":
        record(args)
        return
    if command == "drain":
        drain(args)
        return
    if command == "drain-table":
        drain_table(args[0])
        return
    records = [json.loads(l) for l in open(args[0]) if l.strip()]
    if command == "line":
        print(f"drill: {line(records[-1])}", file=sys.stderr)
    elif command == "table":
        table(records, args[1], args[2])
    elif command == "verdict":
        verdict(records)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
