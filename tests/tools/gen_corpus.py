#!/usr/bin/env python3
"""Writes the smuggling corpus: tests/corpus/{requests,responses}/*.http and
tests/corpus/manifest.json, and the fuzz seed corpora under fuzz/corpus/.

The vectors are authored here, as Python literals, because ~150 raw files are
easier to review as one table; the generated files are committed, and this
script regenerates them byte for byte (`python3 tests/tools/gen_corpus.py`,
then `git diff --exit-code tests/corpus fuzz/corpus` must be clean).

Expectations follow the SPEC in docs/operations.md ("Hostile input: the
corpus"), not necessarily the code of the day. The test policy
(tests/common/corpus.rs) allows any method on `/allowed.*` for any host and on
`/hostonly.*` only for host `good.test`; everything else (`/denied...`) is
denied with 403.

Request vector `expect`: one entry per request the proxy answers, in order:
  {"forward": {method, target, headers: [[name, value]...], body}}  the origin
      receives exactly this (header names compared case-insensitively, fields
      sorted by name, the Connection field left out: the proxy writes its own;
      body = the exact bytes on the wire after the head), the client gets the
      origin's 200;
  {"reject": status}  the proxy answers it locally (403 = policy); any
      rejection other than 403 closes the connection, so nothing follows it.
`max_forwarded`: how many allowed requests the client sent (the origin may never
receive more). `differential`: why h11's reading may differ (a documented choice).
"""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")

RFC = "RFC 9112 example"
PS = "PortSwigger desync"
GARDEN = "HTTP Garden"
SMUG = "smuggler mutation"
SPEC = "sockwarden SPEC"

REQUESTS = []
RESPONSES = []

H = "Host: o.test\r\n"


def fwd(target="/allowed", headers=(("Host", "o.test"),), body="", method="GET"):
    return {"forward": {"method": method, "target": target,
                        "headers": [list(h) for h in headers], "body": body}}


def rej(status):
    return {"reject": status}


def req(id, cls, rfc, source, raw, expect, max_forwarded=None, differential=None, note=None):
    assert not any(v["id"] == id for v in REQUESTS), id
    v = {"id": id, "file": f"requests/{id}.http", "class": cls, "rfc": rfc,
         "source": source, "expect": expect,
         "max_forwarded": max_forwarded if max_forwarded is not None
         else sum(1 for e in expect if "forward" in e)}
    if differential:
        v["differential"] = differential
    if note:
        v["note"] = note
    v["_raw"] = raw if isinstance(raw, bytes) else raw.encode("latin-1")
    REQUESTS.append(v)


def resp(id, cls, rfc, source, raw, status, body="", headers=(), absent=(),
         method="GET", reused=None, request_headers="", note=None):
    assert not any(v["id"] == id for v in RESPONSES), id
    v = {"id": id, "file": f"responses/{id}.http", "class": cls, "rfc": rfc,
         "source": source, "method": method, "request_headers": request_headers,
         # a rejected response closes both connections
         "expect": {"status": status, "body": body,
                    "headers": [list(h) for h in headers], "absent": list(absent),
                    "reused": False if reused is None and status == 502 else reused}}
    if note:
        v["note"] = note
    v["_raw"] = raw if isinstance(raw, bytes) else raw.encode("latin-1")
    RESPONSES.append(v)


SMUGGLED = "GET /denied HTTP/1.1\r\nHost: o.test\r\n\r\n"
HIDDEN_ALLOWED = "GET /allowed HTTP/1.1\r\nHost: o.test\r\n\r\n"
DENIED_ALONE = [rej(403)]

# ---------------------------------------------------------------- baseline
req("baseline-get", "baseline", "RFC 9112 3", RFC,
    "GET /allowed HTTP/1.1\r\n" + H + "\r\n", [fwd()])
req("baseline-denied", "baseline", "RFC 9112 3", SPEC,
    "GET /denied HTTP/1.1\r\n" + H + "\r\n", DENIED_ALONE)
req("baseline-post-cl", "baseline", "RFC 9112 6.2", RFC,
    "POST /allowed HTTP/1.1\r\n" + H + "Content-Length: 5\r\n\r\nhello",
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "5")], body="hello")])
req("baseline-chunked", "baseline", "RFC 9112 7.1", RFC,
    "POST /allowed HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    [fwd(method="POST", headers=[("Host", "o.test"), ("Transfer-Encoding", "chunked")],
         body="5\r\nhello\r\n0\r\n\r\n")])
req("baseline-pipelined", "pipelining", "RFC 9112 9.3.2", RFC,
    "GET /allowed/1 HTTP/1.1\r\n" + H + "\r\nGET /allowed/2 HTTP/1.1\r\n" + H + "\r\n",
    [fwd("/allowed/1"), fwd("/allowed/2")])
req("baseline-http10-no-host", "baseline", "RFC 9112 3.2", RFC,
    "GET /allowed HTTP/1.0\r\n\r\n", [fwd(headers=[])])
req("baseline-query", "baseline", "RFC 9112 3.2.1", RFC,
    "GET /allowed?q=/denied HTTP/1.1\r\n" + H + "\r\n", [fwd("/allowed?q=/denied")])
req("baseline-leading-crlf", "whitespace", "RFC 9112 2.2", RFC,
    "\r\nGET /allowed HTTP/1.1\r\n" + H + "\r\n", [fwd()],
    differential="h11 rejects an empty line before the request line; RFC 9112 2.2 says SHOULD ignore it",
    note="an empty line before the request line is ignored (SHOULD)")
req("baseline-hostonly-good", "policy", "RFC 9112 3.2", SPEC,
    "GET /hostonly HTTP/1.1\r\nHost: good.test\r\n\r\n",
    [fwd("/hostonly", headers=[("Host", "good.test")])])
req("baseline-hostonly-evil", "policy", "RFC 9112 3.2", SPEC,
    "GET /hostonly HTTP/1.1\r\nHost: evil.test\r\n\r\n", DENIED_ALONE)
req("baseline-denied-encoded", "policy", "RFC 9112 3.2.1", SPEC,
    "GET /denied%2f HTTP/1.1\r\n" + H + "\r\n", [rej(400)],
    note="an encoded '/' is refused: servers disagree on decoding it (docs/http.md)")

# ---------------------------------------------------------------- paths
# RFC 3986 5.2.4 and 6.2.2: the path is judged, and forwarded, as what it
# resolves to; forms servers read differently are refused.
for id, target in [("path-dot-dot", "/allowed/../denied"),
                   ("path-encoded-dots", "/allowed/%2e%2e/denied"),
                   ("path-mixed-dots", "/allowed/.%2E/denied"),
                   ("path-absolute-dots", "http://o.test/allowed/../denied")]:
    req(id, "path", "RFC 3986 5.2.4", SPEC,
        f"GET {target} HTTP/1.1\r\n" + H + "\r\n", DENIED_ALONE,
        differential="sockwarden resolves dot segments before the policy judges (RFC 3986 5.2.4): this is /denied, refused 403; h11 keeps the target as sent")
for id, target in [("path-dot-dot-param", "/allowed/..;/denied"),
                   ("path-encoded-backslash", "/allowed/..%5cdenied"),
                   ("path-backslash", "/allowed\\..\\denied"),
                   ("path-encoded-nul", "/allowed%00/../denied"),
                   ("path-bad-percent", "/allowed%zz")]:
    req(id, "path", "RFC 3986 2.1", SPEC,
        f"GET {target} HTTP/1.1\r\n" + H + "\r\n", [rej(400)])
req("path-unreserved-decoded", "path", "RFC 3986 6.2.2.2", SPEC,
    "GET /%61llowed/./x HTTP/1.1\r\n" + H + "\r\n", [fwd("/allowed/x")],
    differential="sockwarden decodes percent-encoded unreserved characters and resolves dot segments (RFC 3986 6.2.2); h11 forwards the target as sent")
req("baseline-obs-text-value", "baseline", "RFC 9110 5.5", RFC,
    b"GET /allowed HTTP/1.1\r\nHost: o.test\r\nX-A: caf\xe9\r\n\r\n",
    [fwd(headers=[("Host", "o.test"), ("X-A", "caf\u00e9")])],
    note="obs-text is allowed in field values; compared as latin-1")

# ---------------------------------------------------------------- Host
for id, value in [("host-path", "o.test/x"), ("host-userinfo", "u@o.test"),
                  ("host-comma-list", "o.test, good.test"), ("host-inner-space", "o test"),
                  ("host-bad-port", "o.test:abc"), ("host-port-sign", "o.test:+80"),
                  ("host-query", "o.test?x"), ("host-two-colons", "o.test:80:80")]:
    req(id, "host", "RFC 9112 3.2", GARDEN,
        f"GET /allowed HTTP/1.1\r\nHost: {value}\r\n\r\n" + SMUGGLED, [rej(400)])
req("host-missing", "host", "RFC 9112 3.2", RFC,
    "GET /allowed HTTP/1.1\r\n\r\n", [rej(400)])
req("host-duplicate", "host", "RFC 9112 3.2", RFC,
    "GET /hostonly HTTP/1.1\r\nHost: good.test\r\nHost: evil.test\r\n\r\n", [rej(400)])
req("host-duplicate-case", "host", "RFC 9112 3.2", GARDEN,
    "GET /hostonly HTTP/1.1\r\nhost: good.test\r\nHOST: evil.test\r\n\r\n", [rej(400)])
req("host-duplicate-same", "host", "RFC 9112 3.2", GARDEN,
    "GET /allowed HTTP/1.1\r\nHost: o.test\r\nHost: o.test\r\n\r\n", [rej(400)])
req("host-empty", "host", "RFC 9112 3.2", RFC,
    "GET /allowed HTTP/1.1\r\nHost:\r\n\r\n", [fwd(headers=[("Host", "")])],
    note="an empty Host is valid when the target URI has no authority")
req("host-port", "host", "RFC 9112 3.2", RFC,
    "GET /allowed HTTP/1.1\r\nHost: o.test:8080\r\n\r\n", [fwd(headers=[("Host", "o.test:8080")])])
req("host-ipv6", "host", "RFC 9112 3.2", RFC,
    "GET /allowed HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", [fwd(headers=[("Host", "[::1]:80")])])
req("host-good-port", "host", "RFC 9112 3.2", SPEC,
    "GET /hostonly HTTP/1.1\r\nHost: good.test:80\r\n\r\n",
    [fwd("/hostonly", headers=[("Host", "good.test:80")])])

# ---------------------------------------------------------------- request target
req("target-absolute", "target", "RFC 9112 3.2.2", RFC,
    "GET http://o.test/allowed?q=1 HTTP/1.1\r\nHost: other.test\r\n\r\n",
    [fwd("/allowed?q=1", headers=[("Host", "o.test")])],
    differential="absolute-form is forwarded in origin-form with Host set to its authority")
req("target-absolute-host-judged", "target", "RFC 9112 3.2.2", PS,
    "GET http://evil.test/hostonly HTTP/1.1\r\nHost: good.test\r\n\r\n", DENIED_ALONE)
req("target-absolute-host-wins", "target", "RFC 9112 3.2.2", PS,
    "GET http://good.test/hostonly HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    [fwd("/hostonly", headers=[("Host", "good.test")])],
    differential="absolute-form is forwarded in origin-form with Host set to its authority")
req("target-absolute-denied", "target", "RFC 9112 3.2.2", SPEC,
    "GET http://o.test/denied HTTP/1.1\r\n" + H + "\r\n", DENIED_ALONE)
req("target-absolute-uppercase-scheme", "target", "RFC 9112 3.2.2", GARDEN,
    "GET HTTP://o.test/allowed HTTP/1.1\r\n" + H + "\r\n",
    [fwd("/allowed", headers=[("Host", "o.test")])],
    differential="absolute-form is forwarded in origin-form with Host set to its authority")
req("target-https-scheme", "target", "RFC 9112 3.2.2", SPEC,
    "GET https://o.test/allowed HTTP/1.1\r\n" + H + "\r\n", [rej(400)])
req("target-ftp-scheme", "target", "RFC 9112 3.2.2", SPEC,
    "GET ftp://o.test/allowed HTTP/1.1\r\n" + H + "\r\n", [rej(400)])
req("target-connect", "target", "RFC 9112 3.2.3", RFC,
    "CONNECT o.test:443 HTTP/1.1\r\nHost: o.test:443\r\n\r\n" + SMUGGLED, [rej(501)])
req("target-asterisk-get", "target", "RFC 9112 3.2.4", RFC,
    "GET * HTTP/1.1\r\n" + H + "\r\n" + SMUGGLED, [rej(400)])
req("target-asterisk-options", "target", "RFC 9112 3.2.4", RFC,
    "OPTIONS * HTTP/1.1\r\n" + H + "\r\n", DENIED_ALONE,
    note="valid, but the test policy allows no '*' path")
req("target-no-slash", "target", "RFC 9112 3.2.1", GARDEN,
    "GET allowed HTTP/1.1\r\n" + H + "\r\n" + SMUGGLED, [rej(400)])
req("target-double-space", "request-line", "RFC 9112 3", GARDEN,
    "GET  /allowed HTTP/1.1\r\n" + H + "\r\n" + SMUGGLED, [rej(400)])
req("target-tab-separator", "request-line", "RFC 9112 3", GARDEN,
    "GET\t/allowed HTTP/1.1\r\n" + H + "\r\n" + SMUGGLED, [rej(400)])
req("target-space-in-target", "request-line", "RFC 9112 3.2", PS,
    "GET /allowed /denied HTTP/1.1\r\n" + H + "\r\n", [rej(400)])

# ---------------------------------------------------------------- versions
for id, version, status in [("version-1.2", "HTTP/1.2", 505), ("version-2.0", "HTTP/2.0", 505),
                            ("version-0.9", "HTTP/0.9", 505), ("version-lowercase", "http/1.1", 400),
                            ("version-garbage", "HTTP/1.1x", 400), ("version-no-dot", "HTTP/11", 400),
                            ("version-missing", "", 400), ("version-two-digit", "HTTP/1.10", 400)]:
    sep = " " if version else ""
    req(id, "version", "RFC 9112 2.3", GARDEN,
        f"GET /allowed{sep}{version}\r\n" + H + "\r\n" + SMUGGLED, [rej(status)])

# ---------------------------------------------------------------- Content-Length
def post_cl(cl_lines, body):
    return "POST /allowed HTTP/1.1\r\n" + H + cl_lines + "\r\n" + body


req("cl-leading-zeros", "content-length", "RFC 9112 6.2", GARDEN,
    post_cl("Content-Length: 010\r\n", "0123456789"),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "10")], body="0123456789")],
    differential="leading zeros are normalized away (the length is the same)")
req("cl-equal-list", "content-length", "RFC 9112 6.3", RFC,
    post_cl("Content-Length: 5, 5\r\n", "hello"),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "5")], body="hello")],
    differential="a list of equal values is normalized to one field (RFC 9110 8.6 MAY)")
req("cl-equal-fields", "content-length", "RFC 9112 6.3", RFC,
    post_cl("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "5")], body="hello")],
    differential="several equal fields are normalized to one (RFC 9110 8.6 MAY)")
req("cl-lowercase-name", "content-length", "RFC 9110 5.1", RFC,
    post_cl("content-length: 5\r\n", "hello"),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "5")], body="hello")])
req("cl-zero-then-pipelined", "content-length", "RFC 9112 6.2", PS,
    post_cl("Content-Length: 0\r\n", SMUGGLED),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "0")]), rej(403)])
req("cl-short-then-smuggled", "content-length", "RFC 9112 6.2", PS,
    post_cl("Content-Length: 2\r\n", "ab" + SMUGGLED),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "2")], body="ab"), rej(403)])
req("cl-body-hides-request", "content-length", "RFC 9112 6.2", PS,
    post_cl(f"Content-Length: {len(SMUGGLED)}\r\n", SMUGGLED),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", str(len(SMUGGLED)))],
         body=SMUGGLED)])
req("cl-get-with-body", "content-length", "RFC 9110 9.3.1", PS,
    "GET /allowed HTTP/1.1\r\n" + H + f"Content-Length: {len(SMUGGLED)}\r\n\r\n" + SMUGGLED,
    [fwd(headers=[("Host", "o.test"), ("Content-Length", str(len(SMUGGLED)))], body=SMUGGLED)])
for id, lines in [("cl-differing-list", "Content-Length: 5, 6\r\n"),
                  ("cl-differing-fields", "Content-Length: 5\r\nContent-Length: 6\r\n"),
                  ("cl-plus-sign", "Content-Length: +5\r\n"),
                  ("cl-negative", "Content-Length: -5\r\n"),
                  ("cl-inner-space", "Content-Length: 5 5\r\n"),
                  ("cl-hex", "Content-Length: 0x5\r\n"),
                  ("cl-trailing-letter", "Content-Length: 5a\r\n"),
                  ("cl-decimal", "Content-Length: 5.0\r\n"),
                  ("cl-overflow", "Content-Length: 99999999999999999999\r\n"),
                  ("cl-empty", "Content-Length:\r\n"),
                  ("cl-empty-element", "Content-Length: 5,\r\n"),
                  ("cl-quoted", "Content-Length: \"5\"\r\n"),
                  ("cl-cl-desync", "Content-Length: 5\r\nContent-Length: 40\r\n")]:
    req(id, "content-length", "RFC 9112 6.3", GARDEN if "cl-desync" not in id else PS,
        post_cl(lines, "hello" + SMUGGLED), [rej(400)])

# ---------------------------------------------------------------- Transfer-Encoding
CHUNKED_HELLO = "5\r\nhello\r\n0\r\n\r\n"
TE_FWD = [fwd(method="POST", headers=[("Host", "o.test"), ("Transfer-Encoding", "chunked")],
              body=CHUNKED_HELLO)]


def post_te(te_lines, body=CHUNKED_HELLO, version="HTTP/1.1"):
    return f"POST /allowed {version}\r\n" + H + te_lines + "\r\n" + body


req("te-uppercase", "transfer-encoding", "RFC 9112 7", RFC,
    post_te("Transfer-Encoding: CHUNKED\r\n"), TE_FWD,
    differential="the coding is forwarded as written canonically: 'chunked'")
req("te-comma-prefix", "transfer-encoding", "RFC 9110 5.6.1", SMUG,
    post_te("Transfer-Encoding: , chunked\r\n"), TE_FWD,
    note="an empty list element is ignored (RFC 9110 5.6.1): the one coding is chunked",
    differential="forwarded as the canonical 'Transfer-Encoding: chunked'")
req("te-lowercase-name", "transfer-encoding", "RFC 9110 5.1", RFC,
    post_te("transfer-encoding: chunked\r\n"), TE_FWD)
req("te-tab-before-value", "transfer-encoding", "RFC 9112 5.1", SMUG,
    post_te("Transfer-Encoding:\tchunked\r\n"), TE_FWD)
req("te-trailing-space", "transfer-encoding", "RFC 9112 5.1", SMUG,
    post_te("Transfer-Encoding: chunked \r\n"), TE_FWD)
for id, lines, status, src in [
        ("te-chunked-twice-list", "Transfer-Encoding: chunked, chunked\r\n", 501, GARDEN),
        ("te-chunked-twice-fields", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 501, SMUG),
        ("te-identity", "Transfer-Encoding: identity\r\n", 501, SMUG),
        ("te-gzip-chunked", "Transfer-Encoding: gzip, chunked\r\n", 501, RFC),
        ("te-chunked-gzip", "Transfer-Encoding: chunked, gzip\r\n", 501, GARDEN),
        ("te-chunked-then-x", "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", 501, PS),
        ("te-x-then-chunked", "Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n", 501, PS),
        ("te-xchunked", "Transfer-Encoding: xchunked\r\n", 501, SMUG),
        ("te-chunkedx", "Transfer-Encoding: chunkedx\r\n", 501, SMUG),
        ("te-quoted", "Transfer-Encoding: \"chunked\"\r\n", 501, SMUG),
        ("te-chunked-param", "Transfer-Encoding: chunked;q=1\r\n", 501, SMUG),
        ("te-empty", "Transfer-Encoding:\r\n", 400, GARDEN),
        ("te-with-cl", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", 400, PS),
        ("cl-with-te", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", 400, PS),
        ("te-cl-zero", "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", 400, PS),
        ("te-space-before-colon", "Transfer-Encoding : chunked\r\nContent-Length: 3\r\n", 400, PS),
        ("te-vtab-value", "Transfer-Encoding: \x0bchunked\r\n", 400, SMUG),
        ("te-formfeed-value", "Transfer-Encoding: \x0cchunked\r\n", 400, SMUG),
        ("te-nul-value", "Transfer-Encoding: chunked\x00\r\n", 400, SMUG),
        ("te-obs-fold", "Transfer-Encoding:\r\n chunked\r\n", 400, SMUG),
        ("te-leading-space-line", "X-A: b\r\n Transfer-Encoding: chunked\r\n", 400, SMUG),
        ("te-underscore", "Transfer_Encoding: chunked\r\n", 400, SMUG),
        ("te-underscore-lower-with-cl", "Content-Length: 5\r\ntransfer_encoding: chunked\r\n", 400, SMUG)]:
    req(id, "transfer-encoding", "RFC 9112 6.1", src, post_te(lines, CHUNKED_HELLO + SMUGGLED),
        [rej(status)])
req("te-http10", "transfer-encoding", "RFC 9112 6.1", RFC,
    post_te("Transfer-Encoding: chunked\r\n", CHUNKED_HELLO + SMUGGLED, "HTTP/1.0"), [rej(400)])
req("cl-te-classic", "cl-te", "RFC 9112 6.1", PS,
    "POST /allowed HTTP/1.1\r\n" + H + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
    + SMUGGLED, [rej(400)])
req("te-cl-classic", "te-cl", "RFC 9112 6.1", PS,
    "POST /allowed HTTP/1.1\r\n" + H + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    + f"{len(SMUGGLED):x}\r\n" + SMUGGLED + "\r\n0\r\n\r\n", [rej(400)])
req("cl-underscore", "underscore", "RFC 9110 5.1", SMUG,
    post_cl("Content_Length: 5\r\n", "hello" + SMUGGLED), [rej(400)])
req("cl-underscore-lower", "underscore", "RFC 9110 5.1", SMUG,
    post_cl("content_length: 5\r\n", "hello" + SMUGGLED), [rej(400)])
req("underscore-other-forwarded", "underscore", "RFC 9110 5.1", SPEC,
    "GET /allowed HTTP/1.1\r\n" + H + "X_Custom: a\r\n\r\n",
    [fwd(headers=[("Host", "o.test"), ("X_Custom", "a")])])
req("underscore-host-suffix-forwarded", "underscore", "RFC 9110 5.1", SPEC,
    "GET /allowed HTTP/1.1\r\n" + H + "Host_: evil.test\r\n\r\n",
    [fwd(headers=[("Host", "o.test"), ("Host_", "evil.test")])])

# ---------------------------------------------------------------- field syntax
for id, line, src in [("ws-before-colon", "X-A : b\r\n", RFC),
                      ("tab-before-colon", "X-A\t: b\r\n", GARDEN),
                      ("host-space-before-colon", "Host : evil.test\r\n", PS),
                      ("obs-fold", "X-A: b\r\n c\r\n", RFC),
                      ("obs-fold-tab", "X-A: b\r\n\tc\r\n", RFC),
                      ("bare-cr-value", "X-A: b\rc\r\n", GARDEN),
                      ("bare-cr-line-end", "X-A: b\r\r\n", GARDEN),
                      ("nul-value", "X-A: b\x00c\r\n", GARDEN),
                      ("esc-value", "X-A: b\x1bc\r\n", GARDEN),
                      ("del-value", "X-A: b\x7fc\r\n", GARDEN),
                      ("ctl-name", "X-\x01A: b\r\n", GARDEN),
                      ("space-in-name", "X A: b\r\n", GARDEN),
                      ("empty-name", ": b\r\n", GARDEN),
                      ("no-colon", "X-A b\r\n", GARDEN),
                      ("nonascii-name", "X-\xe9: b\r\n", GARDEN)]:
    req(id, "field-syntax", "RFC 9112 5", src,
        "GET /allowed HTTP/1.1\r\n" + H + line + "\r\n" + SMUGGLED, [rej(400)])
req("htab-in-value", "field-syntax", "RFC 9110 5.5", RFC,
    "GET /allowed HTTP/1.1\r\n" + H + "X-A: b\tc\r\n\r\n",
    [fwd(headers=[("Host", "o.test"), ("X-A", "b\tc")])])
req("bare-lf-head", "line-endings", "RFC 9112 2.2", RFC,
    "GET /allowed HTTP/1.1\nHost: o.test\nX-A: b\n\n", [fwd(headers=[("Host", "o.test"), ("X-A", "b")])],
    note="bare LF in the head is accepted and forwarded as CRLF (RFC 9112 2.2 MAY)")
req("bare-lf-mixed", "line-endings", "RFC 9112 2.2", GARDEN,
    "GET /allowed HTTP/1.1\r\nHost: o.test\nX-A: b\r\n\n", [fwd(headers=[("Host", "o.test"), ("X-A", "b")])],
    note="bare LF in the head is accepted and forwarded as CRLF (RFC 9112 2.2 MAY)")
req("bare-lf-then-smuggled-cl", "line-endings", "RFC 9112 2.2", GARDEN,
    "POST /allowed HTTP/1.1\nHost: o.test\nContent-Length: 2\n\nab" + SMUGGLED,
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "2")], body="ab"), rej(403)])

# ---------------------------------------------------------------- chunked bodies
def chunked(body, extra=""):
    return "POST /allowed HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n" + body + extra


def cfwd(wire):
    return [fwd(method="POST", headers=[("Host", "o.test"), ("Transfer-Encoding", "chunked")], body=wire)]


for id, body, canon, src, note in [
        ("chunk-leading-zeros", "005\r\nhello\r\n0\r\n\r\n", CHUNKED_HELLO, GARDEN, None),
        ("chunk-uppercase-hex", "A\r\n0123456789\r\n0\r\n\r\n", "a\r\n0123456789\r\n0\r\n\r\n", RFC, None),
        ("chunk-ext-token", "5;a=b\r\nhello\r\n0\r\n\r\n", CHUNKED_HELLO, RFC, None),
        ("chunk-ext-name-only", "5;a\r\nhello\r\n0\r\n\r\n", CHUNKED_HELLO, RFC, None),
        ("chunk-ext-quoted", "5;a=\"q; s\"\r\nhello\r\n0\r\n\r\n", CHUNKED_HELLO, RFC, None),
        ("chunk-ext-quoted-escape", "5;a=\"q\\\"s\"\r\nhello\r\n0\r\n\r\n", CHUNKED_HELLO, RFC, None),
        ("chunk-ext-bws", "5 ; a = b\r\nhello\r\n0\r\n\r\n", CHUNKED_HELLO, RFC, "BWS around ; and ="),
        ("chunk-ext-several", "5;a=b;c;d=\"e\"\r\nhello\r\n0\r\n\r\n", CHUNKED_HELLO, RFC, None),
        ("chunk-last-ext", "5\r\nhello\r\n0;x=y\r\n\r\n", CHUNKED_HELLO, RFC, None),
        ("chunk-last-zeros", "5\r\nhello\r\n000\r\n\r\n", CHUNKED_HELLO, GARDEN, None),
        ("chunk-many", "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", RFC, None),
        ("chunk-empty-body", "0\r\n\r\n", "0\r\n\r\n", RFC, None),
        ("chunk-data-hides-request", f"{len(SMUGGLED):X}\r\n{SMUGGLED}\r\n0\r\n\r\n",
         f"{len(SMUGGLED):x}\r\n{SMUGGLED}\r\n0\r\n\r\n", PS, None),
        ("chunk-data-crlf-inside", "4\r\n\r\n\r\n\r\n0\r\n\r\n", "4\r\n\r\n\r\n\r\n0\r\n\r\n", GARDEN, None),
        ("trailer-forwarded", "5\r\nhello\r\n0\r\nX-T: v\r\n\r\n", "5\r\nhello\r\n0\r\nX-T: v\r\n\r\n", RFC, None),
        ("trailer-cl-dropped", "5\r\nhello\r\n0\r\nContent-Length: 40\r\n\r\n", CHUNKED_HELLO, PS,
         "a Content-Length trailer must not reach the origin"),
        ("trailer-te-dropped", "5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n", CHUNKED_HELLO, SPEC, None),
        ("trailer-host-dropped", "5\r\nhello\r\n0\r\nHost: evil.test\r\n\r\n", CHUNKED_HELLO, SPEC, None),
        ("trailer-auth-dropped", "5\r\nhello\r\n0\r\nAuthorization: x\r\nX-T: v\r\n\r\n",
         "5\r\nhello\r\n0\r\nX-T: v\r\n\r\n", SPEC, None),
        ("trailer-many-dropped", "5\r\nhello\r\n0\r\nConnection: close\r\nCookie: a=b\r\nTrailer: x\r\n"
         "Content-Type: a/b\r\nExpect: x\r\nRange: bytes=0-1\r\nUpgrade: x\r\n\r\n", CHUNKED_HELLO, SPEC, None)]:
    req(id, "chunked", "RFC 9112 7.1", src, chunked(body), cfwd(canon), note=note,
        differential="chunk lines are forwarded canonically and forbidden trailers dropped; "
        "compared on the decoded body" if canon != body else None)
req("chunk-then-pipelined-denied", "chunked", "RFC 9112 7.1", PS,
    chunked(CHUNKED_HELLO, SMUGGLED), cfwd(CHUNKED_HELLO) + [rej(403)])
for id, body, src in [
        ("chunk-trailing-space", "5 \r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-trailing-tab", "5\t\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-empty-ext", "5;\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-ext-no-value", "5;a=\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-ext-space-in-name", "5;a b\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-ext-unterminated-quote", "5;a=\"b\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-ext-bad-char", "5;a=b@c\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-ext-ctl", "5;a=\x01\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-ext-bare-lf", "5;a=b\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-0x-prefix", "0x5\r\nhello\r\n0\r\n\r\n", SMUG),
        ("chunk-negative", "-5\r\nhello\r\n0\r\n\r\n", SMUG),
        ("chunk-plus", "+5\r\nhello\r\n0\r\n\r\n", SMUG),
        ("chunk-leading-space", " 5\r\nhello\r\n0\r\n\r\n", SMUG),
        ("chunk-underscore", "5_0\r\nhello\r\n0\r\n\r\n", SMUG),
        ("chunk-size-overflow", "4000000000000001\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-size-wrap", "10000000000000005\r\nhello\r\n0\r\n\r\n", PS),
        ("chunk-size-line-long", "0" * 4100 + "5\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-ext-long", "5;a=" + "b" * 4100 + "\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-bare-lf-size", "5\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-bare-lf-data", "5\r\nhello\n0\r\n\r\n", GARDEN),
        ("chunk-bare-cr-data", "5\r\nhello\r0\r\n\r\n", GARDEN),
        ("chunk-missing-crlf", "5\r\nhelloX\r\n0\r\n\r\n", GARDEN),
        ("chunk-data-too-long", "3\r\nhello\r\n0\r\n\r\n", PS),
        ("chunk-empty-size", "\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-bad-hex", "5g\r\nhello\r\n0\r\n\r\n", GARDEN),
        ("chunk-last-bare-lf", "5\r\nhello\r\n0\n\n", GARDEN),
        ("trailer-bad-line", "5\r\nhello\r\n0\r\nnot a field\r\n\r\n", GARDEN),
        ("trailer-obs-fold", "5\r\nhello\r\n0\r\nX-T: v\r\n w\r\n\r\n", GARDEN),
        ("trailer-bare-lf", "5\r\nhello\r\n0\r\nX-T: v\n\r\n", GARDEN),
        ("trailer-space-before-colon", "5\r\nhello\r\n0\r\nX-T : v\r\n\r\n", GARDEN),
        ("trailer-ctl", "5\r\nhello\r\n0\r\nX-T: \x01\r\n\r\n", GARDEN)]:
    req(id, "chunked", "RFC 9112 7.1", src, chunked(body, SMUGGLED), [rej(400)],
        max_forwarded=1, note="the origin may see an incomplete request, never a complete one")

# ---------------------------------------------------------------- Connection
req("connection-names-cl", "connection", "RFC 9110 7.6.1", PS,
    post_cl("Connection: content-length\r\nContent-Length: 2\r\n", "ab" + SMUGGLED),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "2")], body="ab"), rej(403)],
    differential="Connection tokens naming framing fields are ignored")
req("connection-names-te", "connection", "RFC 9110 7.6.1", PS,
    post_te("Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO + SMUGGLED),
    TE_FWD + [rej(403)], differential="Connection tokens naming framing fields are ignored")
req("connection-names-host", "connection", "RFC 9110 7.6.1", PS,
    "GET /hostonly HTTP/1.1\r\nConnection: host\r\nHost: good.test\r\n\r\n",
    [fwd("/hostonly", headers=[("Host", "good.test")])],
    differential="Connection tokens naming framing fields are ignored")
req("connection-hop-by-hop-removed", "connection", "RFC 9110 7.6.1", RFC,
    "GET /allowed HTTP/1.1\r\n" + H + "Connection: keep-alive, X-Hop\r\nX-Hop: a\r\nKeep-Alive: timeout=5\r\nX-E: b\r\n\r\n",
    [fwd(headers=[("Host", "o.test"), ("X-E", "b")])])
req("connection-close-then-more", "connection", "RFC 9112 9.6", RFC,
    "GET /allowed HTTP/1.1\r\n" + H + "Connection: close\r\n\r\n" + SMUGGLED, [fwd()],
    note="nothing after a request with Connection: close is read")

# ---------------------------------------------------------------- Expect
req("expect-100", "expect", "RFC 9110 10.1.1", RFC,
    post_cl("Expect: 100-continue\r\nContent-Length: 5\r\n", "hello"),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Expect", "100-continue"), ("Content-Length", "5")],
         body="hello")])
req("expect-other", "expect", "RFC 9110 10.1.1", RFC,
    post_cl("Expect: x-foo\r\nContent-Length: 5\r\n", "hello" + SMUGGLED), [rej(417)])
req("expect-100-and-other", "expect", "RFC 9110 10.1.1", GARDEN,
    post_cl("Expect: 100-continue, x-foo\r\nContent-Length: 5\r\n", "hello" + SMUGGLED), [rej(417)])
req("expect-underscore", "underscore", "RFC 9110 5.1", SMUG,
    "GET /allowed HTTP/1.1\r\n" + H + "Upgrade_: h2c\r\n\r\n",
    [fwd(headers=[("Host", "o.test"), ("Upgrade_", "h2c")])],
    note="'upgrade_' maps to 'upgrade-', not a framing name: forwarded")

# ---------------------------------------------------------------- Upgrade
req("upgrade-websocket-removed", "upgrade", "RFC 9110 7.8", PS,
    "GET /allowed HTTP/1.1\r\n" + H + "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + SMUGGLED,
    [fwd(headers=[("Host", "o.test"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                  ("Sec-WebSocket-Version", "13")]), rej(403)],
    differential="an Upgrade no rule allows is removed; the request is forwarded plain")
req("upgrade-h2c-removed", "upgrade", "RFC 9113 3.1", PS,
    "GET /allowed HTTP/1.1\r\n" + H + "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    "Connection: Upgrade, HTTP2-Settings\r\n\r\n" + SMUGGLED, [fwd(), rej(403)],
    differential="h2c is never allowed; the Upgrade is removed")
req("upgrade-without-connection-token", "upgrade", "RFC 9110 7.8", GARDEN,
    "GET /allowed HTTP/1.1\r\n" + H + "Upgrade: websocket\r\n\r\n" + SMUGGLED, [fwd(), rej(403)])
req("upgrade-post-body", "upgrade", "RFC 9110 7.8", PS,
    post_cl("Upgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 2\r\n", "ab" + SMUGGLED),
    [fwd(method="POST", headers=[("Host", "o.test"), ("Content-Length", "2")], body="ab"), rej(403)],
    differential="an Upgrade no rule allows is removed; the request is forwarded plain")
req("upgrade-denied-path", "upgrade", "RFC 9110 7.8", PS,
    "GET /denied HTTP/1.1\r\n" + H + "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    "GET /denied/2 HTTP/1.1\r\n" + H + "\r\n", [rej(403), rej(403)])
req("upgrade-connect-method", "upgrade", "RFC 9112 3.2.3", PS,
    "CONNECT good.test:80 HTTP/1.1\r\nHost: good.test:80\r\n\r\n" + SMUGGLED, [rej(501)])

# ---------------------------------------------------------------- pipelining
req("pipeline-rejected-then-denied", "pipelining", "RFC 9112 9.3.2", PS,
    "GET /allowed HTTP/1.1\r\n" + H + "Content-Length: x\r\n\r\n" + SMUGGLED, [rej(400)])
req("pipeline-denied-then-allowed", "pipelining", "RFC 9112 9.3.2", SPEC,
    SMUGGLED + "GET /allowed HTTP/1.1\r\n" + H + "\r\n", [rej(403), fwd()])
req("pipeline-allowed-denied-allowed", "pipelining", "RFC 9112 9.3.2", SPEC,
    "GET /allowed/1 HTTP/1.1\r\n" + H + "\r\n" + SMUGGLED + "GET /allowed/2 HTTP/1.1\r\n" + H + "\r\n",
    [fwd("/allowed/1"), rej(403), fwd("/allowed/2")])
req("pipeline-denied-body-hides-allowed", "pipelining", "RFC 9112 9.3.2", PS,
    "POST /denied HTTP/1.1\r\n" + H + f"Content-Length: {len(HIDDEN_ALLOWED)}\r\n\r\n" + HIDDEN_ALLOWED,
    [rej(403)], max_forwarded=0, note="the denied request's body is drained, not parsed")
req("pipeline-bad-version-then-denied", "pipelining", "RFC 9112 2.3", PS,
    "GET /allowed HTTP/9.9\r\n" + H + "\r\n" + SMUGGLED, [rej(505)])
req("pipeline-lf-between", "pipelining", "RFC 9112 2.2", GARDEN,
    "GET /allowed/1 HTTP/1.1\r\n" + H + "\r\n\r\nGET /allowed/2 HTTP/1.1\r\n" + H + "\r\n",
    [fwd("/allowed/1"), fwd("/allowed/2")], note="an empty line between requests is ignored",
    differential="h11 rejects an empty line before a request line; RFC 9112 2.2 says SHOULD ignore it")
req("pipeline-many", "pipelining", "RFC 9112 9.3.2", SPEC,
    "".join(f"GET /allowed/{i} HTTP/1.1\r\n" + H + "\r\n" for i in range(8)),
    [fwd(f"/allowed/{i}") for i in range(8)])
req("pipeline-http10-then-more", "pipelining", "RFC 9112 9.3", RFC,
    "GET /allowed HTTP/1.0\r\n\r\n" + SMUGGLED, [fwd(headers=[])],
    note="an HTTP/1.0 request without keep-alive ends the connection")
req("pipeline-te-smuggled-after-chunks", "pipelining", "RFC 9112 7.1", PS,
    chunked("0\r\n\r\n", "GET /allowed HTTP/1.1\r\n" + H + "\r\n"), cfwd("0\r\n\r\n") + [fwd()])

# ================================================================= responses
OK = "HTTP/1.1 200 OK\r\n"
for id, head, src in [("resp-cl-te", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", PS),
                      ("resp-te-cl", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", PS),
                      ("resp-cl-conflict", "Content-Length: 5\r\nContent-Length: 6\r\n", GARDEN),
                      ("resp-cl-list-conflict", "Content-Length: 5, 6\r\n", GARDEN),
                      ("resp-cl-invalid", "Content-Length: abc\r\n", GARDEN),
                      ("resp-cl-sign", "Content-Length: +5\r\n", GARDEN),
                      ("resp-obs-fold", "Content-Length: 5\r\nX-A: b\r\n c\r\n", RFC),
                      ("resp-bare-cr", "Content-Length: 5\r\nX-A: b\rc\r\n", GARDEN),
                      ("resp-nul", "Content-Length: 5\r\nX-A: b\x00c\r\n", GARDEN),
                      ("resp-ws-before-colon", "Content-Length : 5\r\n", GARDEN)]:
    resp(id, "response-framing", "RFC 9112 6.3", src, OK + head + "\r\nhello", 502)
resp("resp-101-unasked", "response-upgrade", "RFC 9110 15.2.2", PS,
     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + SMUGGLED, 502)
resp("resp-101-upgrade-removed", "response-upgrade", "RFC 9110 7.8", PS,
     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + SMUGGLED, 502,
     request_headers="Upgrade: websocket\r\nConnection: Upgrade\r\n",
     note="no rule allows websocket: the Upgrade was removed, so a 101 is an upstream error")
resp("resp-101-other-protocol", "response-upgrade", "RFC 9110 7.8", PS,
     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n" + SMUGGLED, 502,
     request_headers="Upgrade: websocket\r\nConnection: Upgrade\r\n")
resp("resp-version-2", "response-version", "RFC 9112 2.3", GARDEN, "HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", 502)
resp("resp-status-4digit", "response-status", "RFC 9112 4", GARDEN, "HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello", 502)
resp("resp-too-many-interim", "response-interim", "RFC 9110 15.2", GARDEN,
     "HTTP/1.1 100 Continue\r\n\r\n" * 17 + OK + "Content-Length: 5\r\n\r\nhello", 502)
resp("resp-interim-then-final", "response-interim", "RFC 9110 15.2", RFC,
     "HTTP/1.1 100 Continue\r\n\r\n" * 3 + OK + "Content-Length: 5\r\n\r\nhello", 200, "hello",
     headers=[("Content-Length", "5")])
resp("resp-cl-leading-zeros", "response-framing", "RFC 9112 6.3", GARDEN,
     OK + "Content-Length: 005\r\n\r\nhello", 200, "hello", headers=[("Content-Length", "5")])
resp("resp-chunked-canonical", "response-chunked", "RFC 9112 7.1", GARDEN,
     OK + "Transfer-Encoding: chunked\r\n\r\n005;x=y\r\nhello\r\n0\r\n\r\n", 200, CHUNKED_HELLO,
     headers=[("Transfer-Encoding", "chunked")])
resp("resp-te-gzip-until-close", "response-framing", "RFC 9112 6.3", RFC,
     OK + "Transfer-Encoding: gzip\r\nConnection: close\r\n\r\nhello", 200, "hello",
     headers=[("Transfer-Encoding", "gzip")])
resp("resp-te-gzip-chunked", "response-chunked", "RFC 9112 6.3", RFC,
     OK + "Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200, CHUNKED_HELLO)
resp("resp-extra-after-cl", "response-extra", "RFC 9112 6.3", PS,
     OK + "Content-Length: 5\r\n\r\nhello" + "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad", 200, "hello",
     reused=False)
resp("resp-extra-after-chunked", "response-extra", "RFC 9112 7.1", PS,
     OK + "Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO + "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad",
     200, CHUNKED_HELLO, reused=False)
resp("resp-head-with-body", "response-no-body", "RFC 9110 9.3.2", PS,
     OK + "Content-Length: 5\r\n\r\nhello", 200, "", method="HEAD", headers=[("Content-Length", "5")],
     reused=False, note="the bytes after a HEAD response's head are never forwarded")
resp("resp-204-with-body", "response-no-body", "RFC 9110 15.3.5", PS,
     "HTTP/1.1 204 No Content\r\n\r\nhello" + "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad", 204, "",
     reused=False)
resp("resp-304-with-body", "response-no-body", "RFC 9110 15.4.5", PS,
     "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", 304, "",
     reused=False)
resp("resp-chunked-bad-size", "response-chunked", "RFC 9112 7.1", GARDEN,
     OK + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 502,
     note="a bad chunk line after the head went out cannot become a 502: the client sees a truncated body "
     "and a close (checked as: no complete 200)")
resp("resp-plain", "baseline", "RFC 9112 6.3", RFC, OK + "Content-Length: 5\r\n\r\nhello", 200, "hello",
     reused=True)


FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fuzz", "corpus")
DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def yaml_blocks(path):
    """The ```yaml blocks of a Markdown file."""
    out, block = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if block is None and line.strip() == "```yaml":
                block = []
            elif block is not None and line.strip() == "```":
                out.append("".join(block))
                block = None
            elif block is not None:
                block.append(line)
    return out


def fuzz_seeds():
    """Seed corpora for fuzz/ (cargo-fuzz): heads from the vectors, chunked
    bodies (8 seed bytes, then the body), and the documented configs."""
    seeds = {"request_head": {}, "response_head": {}, "chunked": {}, "config": {}}
    for v in REQUESTS:
        seeds["request_head"][v["id"]] = v["_raw"]
        head, sep, body = v["_raw"].partition(b"\r\n\r\n")
        if sep and b"chunked" in head.lower():
            seeds["chunked"][v["id"]] = bytes(8) + body
    for v in RESPONSES:
        seeds["response_head"][v["id"]] = v["_raw"]
        head, sep, body = v["_raw"].partition(b"\r\n\r\n")
        if sep and b"chunked" in head.lower():
            seeds["chunked"][v["id"]] = b"\x01" * 8 + body
    for name in ("README.md", "docs/configuration.md"):
        for i, text in enumerate(yaml_blocks(os.path.join(DOCS, name))):
            seeds["config"][f"{os.path.basename(name)}-{i}.yaml"] = text.encode()
    for target, files in seeds.items():
        d = os.path.join(FUZZ, target)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


def main():
    for sub in ("requests", "responses"):
        d = os.path.join(ROOT, sub)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
    manifest = {"requests": [], "responses": []}
    for key, vectors in (("requests", REQUESTS), ("responses", RESPONSES)):
        for v in vectors:
            with open(os.path.join(ROOT, v["file"]), "wb") as f:
                f.write(v["_raw"])
            manifest[key].append({k: val for k, val in v.items() if k != "_raw"})
    with open(os.path.join(ROOT, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=True)
        f.write("\n")
    fuzz_seeds()
    print(f"{len(REQUESTS)} request vectors, {len(RESPONSES)} response vectors", file=sys.stderr)


if __name__ == "__main__":
    main()
