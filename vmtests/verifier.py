#!/usr/bin/env python3
"""Records the verifier's instruction count of each sockwarden program on
the running kernel, in the style of veristat (program, verified_insns).

Starts the real binary with a configuration that loads and attaches every
program (preserve-ip-port for the tc return-path program, the sockmap engine
for sw_msg) in a private network namespace with a veth pair, waits until
/readyz answers, reads each
program's bpf_prog_info, stops the binary with SIGTERM and removes what it
made. bpftool 7.1 (Debian 12) does not print verified_insns, so the counts
come from BPF_OBJ_GET_INFO_BY_FD directly.

Usage: verifier.py SOCKWARDEN_BINARY OUTPUT_FILE LABEL
"""

import ctypes
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

SYS_BPF = 321  # x86_64
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
# struct bpf_prog_info (include/uapi/linux/bpf.h): name[16] at 64,
# verified_insns at 216 (Linux 5.16+).
PROG_INFO_LEN = 232
# struct bpf_link_info: type, id, prog_id.
LINK_INFO_LEN = 12

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    ret = libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), buf, ctypes.c_uint(128))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd {cmd}): {os.strerror(err)}")
    return ret


def obj_info(fd, length):
    info = ctypes.create_string_buffer(length)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, length, ctypes.addressof(info)))
    return info.raw


def link_prog_id(pinned):
    path = ctypes.create_string_buffer(os.fsencode(pinned))
    fd = bpf(BPF_OBJ_GET, struct.pack("=Q", ctypes.addressof(path)))
    try:
        return struct.unpack_from("=I", obj_info(fd, LINK_INFO_LEN), 8)[0]
    finally:
        os.close(fd)


def prog_name_and_insns(prog_id):
    fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("=I", prog_id))
    try:
        info = obj_info(fd, PROG_INFO_LEN)
    finally:
        os.close(fd)
    name = info[64:80].split(b"\0", 1)[0].decode()
    return name, struct.unpack_from("=I", info, 216)[0]


def run(*args, **kw):
    return subprocess.run(args, check=True, timeout=30, **kw)


CONFIG = """\
proxy:
  listen: 10.77.0.1:15001
admin:
  listen: 127.0.0.1:9901
bpf:
  pin_path: {pin}
access_log:
  path: {dir}/access.log
upstream:
  source: preserve-ip-port
forwarding:
  engine: sockmap
transparent:
  interfaces: [swv0]
policies:
  - name: verifier
    cgroup: /sockwarden-verifier
    egress:
      - to: ["10.77.1.0/24"]
        ports: [80]
        http:
          - method: GET
"""


def wait_ready(child, netns, stderr_path):
    """Polls /readyz from inside the namespace for up to 120 s (TCG is slow)."""
    started = time.monotonic()
    deadline = started + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            break
        probe = subprocess.run(
            ["nsenter", f"--net=/run/netns/{netns}", "curl", "-sf", "--max-time", "2",
             "-o", "/dev/null", "http://127.0.0.1:9901/readyz"],
            timeout=10, check=False)
        if probe.returncode == 0:
            print(f"verifier.py: sockwarden ready after {time.monotonic() - started:.1f} s")
            return
        time.sleep(0.2)
    with open(stderr_path, encoding="utf-8", errors="replace") as f:
        sys.exit(f"verifier.py: sockwarden did not become ready:\n{f.read()}")


def record(binary, netns, pin, workdir):
    run("ip", "netns", "add", netns)
    ns = ["ip", "-n", netns]
    run(*ns, "link", "set", "lo", "up")
    run(*ns, "addr", "add", "10.77.0.1/32", "dev", "lo")
    run(*ns, "link", "add", "swv0", "type", "veth", "peer", "name", "swv1")
    run(*ns, "link", "set", "swv0", "up")
    config = os.path.join(workdir, "sockwarden.yaml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(CONFIG.format(pin=pin, dir=workdir))
    stderr_path = os.path.join(workdir, "stderr")
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", binary, "run", "--config", config],
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_ready(child, netns, stderr_path)
        ids = [link_prog_id(os.path.join(pin, "links", link))
               for link in os.listdir(os.path.join(pin, "links"))]
        net = run("nsenter", f"--net=/run/netns/{netns}", "bpftool", "-j", "net", "show",
                  "dev", "swv0", capture_output=True).stdout
        ids += [p["id"] for entry in json.loads(net) for p in entry.get("tc", [])]
        # sw_msg is attached to a map (sk_workloads), not through a link:
        # this run's is the newest program of that name.
        msg = json.loads(run("bpftool", "-j", "prog", "show", "name", "sw_msg",
                             capture_output=True).stdout)
        ids.append(max(p["id"] for p in (msg if isinstance(msg, list) else [msg])))
        return sorted(prog_name_and_insns(i) for i in ids)
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main():
    binary, output, label = sys.argv[1:4]
    tag = f"sw-verifier-{os.getpid()}"
    pin = f"/sys/fs/bpf/{tag}"
    workdir = tempfile.mkdtemp(prefix=f"{tag}-")
    try:
        progs = record(binary, tag, pin, workdir)
    finally:
        subprocess.run(["ip", "netns", "del", tag], stderr=subprocess.DEVNULL, check=False)
        subprocess.run(["rm", "-rf", workdir, pin], check=False)
    width = max(len("program"), *(len(name) for name, _ in progs))
    lines = [f"# verifier instruction counts on {label}",
             f"{'program':<{width}}  verified_insns"]
    lines += [f"{name:<{width}}  {insns}" for name, insns in progs]
    with open(output + ".new", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(output + ".new", output)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
