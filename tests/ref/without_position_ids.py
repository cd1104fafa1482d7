#!/usr/bin/python3
"""A copy of a torch checkpoint without BERT's position_ids buffer, as
transformers >= 4.31 saves a BertModel (the buffer is persistent=False):

  without_position_ids.py SRC.pth|SRC_DIR DST.pth|DST_DIR

A directory (a Hugging Face BERT directory) is copied with its
pytorch_model.bin rewritten; other files as they are.
"""
import os
import shutil
import sys
from collections import OrderedDict

import torch


def strip(src, dst):
    sd = torch.load(src)
    out = OrderedDict((k, v) for k, v in sd.items() if k.split(".")[-1] != "position_ids")
    if len(out) == len(sd):
        sys.exit(f"{src}: no position_ids buffer")
    torch.save(out, dst)


def main(src, dst):
    if os.path.isdir(src):
        shutil.copytree(src, dst)
        strip(os.path.join(src, "pytorch_model.bin"), os.path.join(dst, "pytorch_model.bin"))
    else:
        strip(src, dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
