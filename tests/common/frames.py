"""Crafted frames for the guard's attack tests, written with scapy on eth0 of the namespace
it runs in. Each command sends a few copies (the tests check that none got through).

usage: frames.py COMMAND ARGS...
"""
import sys

from scapy.all import (
    ARP, BOOTP, DHCP, Dot1Q, Ether, ICMPv6ND_NA, ICMPv6ND_Redirect, ICMPv6NDOptDstLLAddr,
    IP, IPv6, LLC, STP, UDP, Raw, sendp,
)
from scapy.layers.dhcp6 import DHCP6_Reply, DHCP6OptServerId, DUID_LL

IFACE = "eth0"


def mac_bytes(m):
    return bytes(int(x, 16) for x in m.split(":"))


def send(frames, count=3):
    sendp(frames, iface=IFACE, count=count, verbose=False)


def tagged_arp(src_mac, claim_ip, dst_mac, dst_ip):
    """A priority-tagged (VLAN 0) ARP reply claiming claim_ip for src_mac."""
    send(Ether(src=src_mac, dst=dst_mac) / Dot1Q(vlan=0) /
         ARP(op=2, hwsrc=src_mac, psrc=claim_ip, hwdst=dst_mac, pdst=dst_ip))


def tagged_udp(src_mac, src_ip, dst_mac, dst_ip, vlan="0"):
    """A tagged IPv4 datagram with a forged source, to udp 5099."""
    send(Ether(src=src_mac, dst=dst_mac) / Dot1Q(vlan=int(vlan)) /
         IP(src=src_ip, dst=dst_ip) / UDP(sport=5099, dport=5099) / Raw(b"tagged"))


def udp(src_mac, src_ip, dst_mac, dst_ip, dport):
    """A plain IPv4 datagram (the control for the tagged one)."""
    send(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) /
         UDP(sport=5099, dport=int(dport)) / Raw(b"plain"))


def dhcp(src_mac, src_ip, chaddr, msg, ciaddr="0.0.0.0", giaddr="0.0.0.0"):
    """A DHCP client message (discover, request, release, decline) for chaddr."""
    send(Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff") /
         IP(src=src_ip, dst="255.255.255.255") / UDP(sport=68, dport=67) /
         BOOTP(op=1, chaddr=mac_bytes(chaddr), ciaddr=ciaddr, giaddr=giaddr, xid=0x1234) /
         DHCP(options=[("message-type", msg), "end"]))


def dhcp6_reply(src_mac, dst_ip):
    """A DHCPv6 server reply from a guest."""
    send(Ether(src=src_mac, dst="33:33:00:00:00:01") /
         IPv6(src=ll(src_mac), dst=dst_ip) / UDP(sport=547, dport=546) /
         DHCP6_Reply(trid=1) / DHCP6OptServerId(duid=DUID_LL(lladdr=src_mac)))


def ll(mac):
    b = bytearray(mac_bytes(mac))
    b[0] ^= 2
    e = b[:3] + b"\xff\xfe" + b[3:]
    return "fe80::" + ":".join("%02x%02x" % (e[i], e[i + 1]) for i in range(0, 8, 2))


def na(src_mac, target, dst_ip, dst_mac):
    """An unsolicited override advertisement: target is at src_mac."""
    send(Ether(src=src_mac, dst=dst_mac) / IPv6(src=ll(src_mac), dst=dst_ip, hlim=255) /
         ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=src_mac))


def na_own_target_foreign_ll(src_mac, dst_ip, dst_mac, foreign_mac):
    """An advertisement of the sender's own address naming another MAC."""
    send(Ether(src=src_mac, dst=dst_mac) / IPv6(src=ll(src_mac), dst=dst_ip, hlim=255) /
         ICMPv6ND_NA(tgt=ll(src_mac), R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=foreign_mac))


def redirect(src_mac, victim_ip, victim_mac, target, new_router):
    """An ICMPv6 redirect telling the victim to reach target through new_router."""
    send(Ether(src=src_mac, dst=victim_mac) /
         IPv6(src=ll(src_mac), dst=victim_ip, hlim=255) /
         ICMPv6ND_Redirect(tgt=new_router, dst=target))


def bpdu(src_mac):
    """An STP configuration BPDU claiming root, and LLDP and CDP frames."""
    send(Ether(src=src_mac, dst="01:80:c2:00:00:00") / LLC(dsap=0x42, ssap=0x42, ctrl=3) /
         STP(rootid=0, rootmac=src_mac, bridgeid=0, bridgemac=src_mac))
    send(Ether(src=src_mac, dst="01:80:c2:00:00:0e", type=0x88cc) / Raw(b"\x02\x07\x04" + mac_bytes(src_mac) + b"\x00" * 20))
    send(Ether(src=src_mac, dst="01:00:0c:cc:cc:cc") / LLC(dsap=0xaa, ssap=0xaa, ctrl=3) / Raw(b"\x00\x00\x0c\x20\x00" + b"\x00" * 40))


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
