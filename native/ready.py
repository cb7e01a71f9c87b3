#!/usr/bin/env python3
"""Readiness probes for scripts/stack: exit 0 when the component answers, 1 otherwise.

  ready.py kafka HOST PORT   the broker answers a Metadata request and lists a broker
  ready.py http URL          GET answers 200
  ready.py tcp HOST PORT     the port accepts a connection
"""
import socket
import struct
import sys
import urllib.request


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def kafka(host, port):
    # Metadata v4 (non-flexible; Kafka 4 no longer serves v0-v3), all topics (-1),
    # no auto-creation. Header v1: api key, version, correlation id, client id.
    client_id = b"stack-ready"
    request = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    request += struct.pack(">i?", -1, False)
    with socket.create_connection((host, int(port)), timeout=3) as sock:
        sock.settimeout(3)
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", recv_exactly(sock, 4))[0]
        response = recv_exactly(sock, size)
    correlation_id, _throttle_ms, broker_count = struct.unpack(">iii", response[:12])
    return correlation_id == 7 and broker_count >= 1


def http(url):
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.status == 200


def tcp(host, port):
    with socket.create_connection((host, int(port)), timeout=3):
        return True


def main():
    probes = {"kafka": kafka, "http": http, "tcp": tcp}
    try:
        ok = probes[sys.argv[1]](*sys.argv[2:])
    except (KeyError, IndexError, TypeError):
        print(__doc__, file=sys.stderr)
        return 2
    except Exception:  # not up yet: refused, reset, timeout, bad status
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
