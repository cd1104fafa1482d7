#!/usr/bin/python3
"""PyTorch/PIL reference for clip-prep's eval preprocessing.

  crop:      torchvision Resize(size, BICUBIC) + CenterCrop(size)  (OpenAI CLIP's eval transform)
  squash:    torchvision Resize((size, size), BICUBIC)             (Chinese-CLIP)
  letterbox: long side -> size with PIL bicubic (short = round half up, >= 1), pasted centred
             (offset floor((size - n) / 2)) on a size x size canvas of the CLIP mean (123, 117, 104)

Commands:
  fixtures OUTDIR   write the parity fixtures for tests/unit/test_image.c (cases.txt + PNGs)
  bench N SIZE...   images/s of PIL open + convert + transform + uint8 tensor on the first N
                    cn_val images of $DATA (a Flickr8k-CN folder), 1 process and 2 processes (torch on 1 thread each):
                    one line "SIZE RATE_1 RATE_2 RATE_PER_CPU_SECOND" per size, each the
                    best of 3 passes
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_env  # noqa: E402

reference_env.ensure()  # the reference at its best: before torch loads its BLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from PIL import Image  # noqa: E402

BICUBIC = T.InterpolationMode.BICUBIC
PAD = (123, 117, 104)
MINI = 'tests/fixtures/flickr8k-mini'
DATA = os.environ.get('DATA', '')


def preprocess(img, size, mode):
    """PIL RGB image -> uint8 [size, size, 3]."""
    if mode == 'crop':
        out = T.CenterCrop(size)(T.Resize(size, interpolation=BICUBIC)(img))
    elif mode == 'squash':
        out = T.Resize((size, size), interpolation=BICUBIC)(img)
    elif mode == 'letterbox':
        w, h = img.size
        if w >= h:
            nw, nh = size, max(1, int(np.floor(size * h / w + 0.5)))
        else:
            nw, nh = max(1, int(np.floor(size * w / h + 0.5))), size
        out = Image.new('RGB', (size, size), PAD)
        out.paste(img.resize((nw, nh), Image.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
    else:
        raise ValueError(mode)
    return np.asarray(out, dtype=np.uint8)


# (source image, crop box x, y, w, h or None) -> non-square inputs that exercise the resize
# and the output sizes tested for each
SOURCES = [
    ('1579798212_d30844b4c5.jpg', None, [160, 288]),
    ('1679557684_50a206e4a9.jpg', (0, 37, 224, 150), [160, 224, 288]),  # landscape
    ('2090545563_a4e66ec76b.jpg', (51, 0, 121, 224), [160, 288]),       # portrait
    ('2596619849_7b635dd310.jpg', (10, 20, 97, 61), [160]),             # small: upscales
]
MODES = ['crop', 'squash', 'letterbox']


def fixtures(outdir):
    os.makedirs(outdir, exist_ok=True)
    lines = ['# image x y w h size mode expected.png  (box -1 = whole image)']
    for name, box, sizes in SOURCES:
        img = Image.open(f'{MINI}/flickr8k-images/{name}').convert('RGB')
        if box:
            x, y, w, h = box
            img = img.crop((x, y, x + w, y + h))
        for size in sizes:
            for mode in MODES:
                exp = f'{os.path.splitext(name)[0]}_{size}_{mode}.png'
                Image.fromarray(preprocess(img, size, mode)).save(f'{outdir}/{exp}', optimize=True)
                b = box or (-1, -1, -1, -1)
                lines.append(f'{name} {b[0]} {b[1]} {b[2]} {b[3]} {size} {mode} {exp}')
    with open(f'{outdir}/cases.txt', 'w') as f:
        f.write('\n'.join(lines) + '\n')


def bench_paths(n):
    if not os.path.exists(f'{DATA}/cn_val.json'):
        sys.exit(f"prep_ref.py bench: DATA='{DATA}' has no cn_val.json: set DATA to a Flickr8k-CN folder")
    ann = json.load(open(f'{DATA}/cn_val.json'))[:n]
    return [f'{DATA}/{a["image"]}' for a in ann]


def run_ref(args):
    paths, size = args
    torch.set_num_threads(1)
    tf = T.Compose([T.Resize(size, interpolation=BICUBIC), T.CenterCrop(size)])
    c = time.process_time()
    for p in paths:
        torch.from_numpy(np.array(tf(Image.open(p).convert('RGB'))))  # uint8 HWC tensor
    return time.process_time() - c


def bench(n, sizes):
    import multiprocessing as mp
    paths = bench_paths(n)
    print(reference_env.describe('reference (PIL + torchvision, 1 thread a process)'), file=sys.stderr)
    for size in sizes:
        run_ref((paths[:20], size))  # warm the page cache and imports
        one = cpu = two = 0.0  # best of 3, as for clip-prep
        for _ in range(3):
            t = time.time()
            c = run_ref((paths, size))
            one, cpu = max(one, n / (time.time() - t)), max(cpu, n / c)
        with mp.Pool(2) as pool:
            pool.map(run_ref, [(paths[:10], size)] * 2)
            for _ in range(3):
                t = time.time()
                pool.map(run_ref, [(paths[0::2], size), (paths[1::2], size)])
                two = max(two, n / (time.time() - t))
        print(f'{size} {one:.1f} {two:.1f} {cpu:.1f}')


if __name__ == '__main__':
    if len(sys.argv) >= 3 and sys.argv[1] == 'fixtures':
        fixtures(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == 'bench':
        bench(int(sys.argv[2]), [int(s) for s in sys.argv[3:]])
    else:
        sys.exit(__doc__)
