#!/usr/bin/env python3
"""Writes the fuzz seed corpora (fuzz/seeds/<target>/) from the kernel vxlan captures in
tests/data (over IPv4 and IPv6) and a few hand-written configs and leases. Run from the repository root."""
import os, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")

def frames(name):
    out = []
    for line in open(os.path.join(ROOT, "tests", "data", name)):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(bytes.fromhex(line))
    return out

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF

def udp_datagram(src, dst, port, payload):
    ulen = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 1, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", port, port, ulen, 0) + payload
    c = csum(src + dst + struct.pack("!BBH", 0, 17, ulen) + udp) or 0xFFFF
    return ip + udp[:6] + struct.pack("!H", c) + udp[8:]

def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

for kind in ("full", "partial"):
    for i, f in enumerate(frames("kernel-vxlan-%s-checksums.hex" % kind)):
        datagram = f[14:]
        write("vxlan_decap", "kernel-%s-%d-datagram" % (kind, i), datagram)
        write("vxlan_decap", "kernel-%s-%d-payload" % (kind, i), datagram[28:])
        inner = datagram[50:]
        src, dst = datagram[12:16], datagram[16:20]
        write("udp_decap", "kernel-%s-%d-datagram" % (kind, i), udp_datagram(src, dst, 8285, inner))
        write("udp_decap", "kernel-%s-%d-payload" % (kind, i), inner)

# VXLAN over IPv6, as the kernel's flannel-v6.1 sends it (scripts/capture-vectors6): the
# outer IPv6 datagram and the UDP payload a socket would return.
for kind in ("full", "partial"):
    for i, f in enumerate(frames("kernel-vxlan6-%s-checksums.hex" % kind)):
        datagram = f[14:]
        write("vxlan_decap", "kernel6-%s-%d-datagram" % (kind, i), datagram)
        write("vxlan_decap", "kernel6-%s-%d-payload" % (kind, i), datagram[48:])

confs = [
    '{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}',
    '{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":8285}}',
    '{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.16.0.0","SubnetMax":"10.32.0.0","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"MTU":9000}}',
    '{"Network":"10.10.0.0/28"}',
    '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56"}',
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}',
    '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":124,"Backend":{"Type":"host-gw"}}',
]
for i, c in enumerate(confs):
    write("net_conf", "conf-%d.json" % i, c.encode())

leases = [
    '{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}',
    '{"PublicIP":"192.0.2.3","BackendType":"udp"}',
    '{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:01:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:01:02"}}',
    "10.244.1.0-24",
    "10.5.52.0-24&fc00::-64",
    '{"PublicIP":"192.0.2.1","PublicIPv6":null}',  # flanneld's udp backend, as it writes it
]
for i, l in enumerate(leases):
    write("lease_json", "lease-%d" % i, l.encode())

# gro_datagrams: a little-endian u16 stride, then a UDP_GRO read (kernel payloads to node B).
# virtio_split: a virtio-net header, then a TUN read (plain, and TSO headers over TCP).
import struct
full = frames("kernel-vxlan-full-checksums.hex") + frames("kernel-vxlan-partial-checksums.hex")
to_b = [f[14 + 28:] for f in full if f[14 + 16:14 + 20] == bytes([192, 0, 2, 2])]
for i, p in enumerate(to_b):
    write("gro_datagrams", "single-%d" % i, struct.pack("<H", 0) + p)
    write("gro_datagrams", "double-%d" % i, struct.pack("<H", len(p)) + p + p)
# The same over the IPv6 underlay (40-byte outer header): payloads to node B, 2001:db8::2.
full6 = frames("kernel-vxlan6-full-checksums.hex") + frames("kernel-vxlan6-partial-checksums.hex")
b6 = bytes.fromhex("20010db8000000000000000000000002")
to_b6 = [f[14 + 48:] for f in full6 if f[14 + 24:14 + 40] == b6]
for i, p in enumerate(to_b6):
    write("gro_datagrams", "single6-%d" % i, struct.pack("<H", 0) + p)
    write("gro_datagrams", "double6-%d" % i, struct.pack("<H", len(p)) + p + p)
for i, f in enumerate(full6):
    inner = f[14 + 70:]
    write("virtio_split", "plain6-%d" % i, bytes(10) + inner)
    if inner[6] == 6:
        thl = (inner[40 + 12] >> 4) * 4
        write("virtio_split", "tso6-%d" % i, struct.pack("<BBHHHH", 1, 4, 40 + thl, 8, 40, 16) + inner)
for i, f in enumerate(full):
    inner = f[14 + 50:]
    write("virtio_split", "plain-%d" % i, bytes(10) + inner)
    if inner[9] == 6:
        thl = (inner[32] >> 4) * 4
        write("virtio_split", "tso-%d" % i, struct.pack("<BBHHHH", 1, 1, 20 + thl, 8, 20, 16) + inner)
