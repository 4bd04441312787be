#!/usr/bin/python3
"""h11's reading of every request vector in tests/corpus/manifest.json, for
tests/differential.rs: prints one JSON object mapping each vector id to
{"error": null or h11's error text, "requests": [complete requests]}, each
request {method, target, headers: [[name, value]], body} with the body
decoded (chunked framing removed) and every byte string as latin-1.

h11 (python3-h11, 0.14) is the independent HTTP/1 parser: the server side
of a connection is fed the vector's bytes, answers each request with an
empty 200 (405 to CONNECT) so the next pipelined one is read, and stops at the first
protocol error, at an incomplete request, or when the connection cannot be
reused (HTTP/1.0, Connection: close, a protocol switch).
"""
import json
import os
import sys

import h11

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def s(b):
    return b.decode("latin-1")


def read(raw):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    requests, current, body = [], None, b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                current, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                requests.append({"method": s(current.method), "target": s(current.target),
                                 "headers": [[s(k), s(v)] for k, v in current.headers],
                                 "body": s(body)})
                current_method, current = current.method, None
                # 200 refuses an Upgrade (only 101 accepts it); for CONNECT
                # a 2xx would accept the tunnel, so refuse it with a 405.
                status = 405 if current_method == b"CONNECT" else 200
                conn.send(h11.Response(status_code=status, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
    except h11.ProtocolError as e:
        return {"error": str(e) or type(e).__name__, "requests": requests}
    return {"error": None, "requests": requests}


def main():
    with open(os.path.join(ROOT, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    out = {}
    for v in manifest["requests"]:
        with open(os.path.join(ROOT, v["file"]), "rb") as f:
            out[v["id"]] = read(f.read())
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
