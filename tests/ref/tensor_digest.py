#!/usr/bin/python3
"""tensor_digest.py FILE.safetensors REGEX

One line per tensor whose name matches REGEX (re.search), in name order:
its name and the SHA-256 of its bytes. Standard library only, so that the
bats tests can compare saved tensors bit for bit without NumPy or torch."""
import hashlib
import json
import re
import struct
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, pattern = sys.argv[1], re.compile(sys.argv[2])
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    found = 0
    for name in sorted(k for k in header if k != "__metadata__"):
        if not pattern.search(name):
            continue
        a, b = header[name]["data_offsets"]
        print(name, hashlib.sha256(body[a:b]).hexdigest())
        found += 1
    if not found:
        sys.exit(f"{path}: no tensor matches {sys.argv[2]}")


if __name__ == "__main__":
    main()
