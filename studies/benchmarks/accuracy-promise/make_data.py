"""Write the two image folders of issue 38: sklearn's digits as PNGs, and 3,000 Fashion-MNIST
training images (stratified, seed 0) with the 10,000-image test set."""
import gzip, sys
from pathlib import Path
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

out = Path(sys.argv[1])
d = load_digits()
for i, (img, y) in enumerate(zip(d.images, d.target)):
    p = out / "digits-png" / str(y); p.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255 / 16).round().astype(np.uint8), "L").save(p / f"{i:04d}.png")

def idx(path, images):
    with gzip.open(path) as f:
        data = np.frombuffer(f.read(), np.uint8)
    return data[16:].reshape(-1, 28, 28) if images else data[8:]

root = Path("/usr/share/datasets/fashion-mnist")
xtr, ytr = idx(root / "train-images-idx3-ubyte.gz", True), idx(root / "train-labels-idx1-ubyte.gz", False)
xte, yte = idx(root / "t10k-images-idx3-ubyte.gz", True), idx(root / "t10k-labels-idx1-ubyte.gz", False)
rng = np.random.default_rng(0)
pick = np.concatenate([rng.choice(np.flatnonzero(ytr == c), 300, replace=False) for c in range(10)])
for split, xs, ys, ids in (("train", xtr, ytr, pick), ("test", xte, yte, np.arange(len(yte)))):
    for i in ids:
        p = out / "fmnist-3000" / split / str(ys[i]); p.mkdir(parents=True, exist_ok=True)
        Image.fromarray(xs[i], "L").save(p / f"{i:05d}.png")
