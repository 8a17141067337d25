#!/usr/bin/env python3
"""Sends HL7 v2 messages over MLLP, as an interface engine would.

    mllp_send.py HOST PORT FILE

FILE holds one message per line (segments separated by carriage returns,
as HL7 files are usually saved). Each message is framed (0x0B ... 0x1C
0x0D), sent, and its ACK printed. Exits non-zero if an ACK is missing or
is not an application accept (MSA|AA).
"""
import socket
import sys

START, END = b"\x0b", b"\x1c\x0d"


def main() -> int:
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(path, "rb") as f:
        messages = [m.strip(b"\n") for m in f.read().split(b"\n") if m.strip()]
    with socket.create_connection((host, port), timeout=10) as s:
        for message in messages:
            s.sendall(START + message + END)
            ack = b""
            while END not in ack:
                chunk = s.recv(4096)
                if not chunk:
                    print("connection closed before the ACK", file=sys.stderr)
                    return 1
                ack += chunk
            text = ack.strip(START + END).decode("utf-8", "replace")
            print(text.replace("\r", "\n"))
            if "MSA|AA|" not in text:
                print("not an application accept", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
