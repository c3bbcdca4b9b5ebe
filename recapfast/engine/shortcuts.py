"""Shortcut measurements for a trained detector and the synthetic data it learned from (issue 24).

    python -m recapfast.engine.shortcuts sources MODEL DATA [--split test] [--json OUT]
    python -m recapfast.engine.shortcuts jpeg MODEL FOLDER [--quality 95,75] [--json OUT]
    python -m recapfast.engine.shortcuts globalstats DATA/train [--json OUT]
    python -m recapfast.engine.shortcuts tiles MODEL FOLDER [--json OUT]

* ``sources``: accuracy per class and per source photo of a ``recapfast synth --scenes`` split, read from
  ``DATA/manifest.json`` (each file's scene); a detector that is right on some photos only has learned the
  photos, not the trace.
* ``jpeg``: accuracy of a labelled folder (64 px center crops) as stored, and after re-saving EVERY image,
  both classes alike, as JPEG at each quality; a detector that keys on compression history falls here.
* ``tiles``: per file of a labelled folder, the share of its non-overlapping 64 px tiles the model gets right
  (for the held-out real photographs: the share called original, photo by photo).
* ``globalstats``: held-out accuracy of a logistic regression on per-channel mean, standard deviation and
  16-bin histograms (a model that sees global statistics only); near 50% means the classes do not differ
  globally.

Every number is measured on the files given; nothing here is an explanation.
"""
from __future__ import annotations

import io
import json
import os
import sys
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

PATCH = 64


def _load(path: str) -> np.ndarray:
    from recapfast.data.folder import decode

    img, _ = decode(path)
    return img


def _crop(img: np.ndarray, size: int = PATCH) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]


def predict(model, images: Sequence[np.ndarray], batch: int = 256) -> np.ndarray:
    """Argmax decisions of ``model`` on uint8 HWC images (all the same size)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack(images[i:i + batch])).permute(0, 3, 1, 2).float()
            out.append(model(x).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def sources(model, data_dir: str, split: str = "test") -> dict:
    """Accuracy per (class, source photo) of one split of a ``--scenes`` data set."""
    with open(os.path.join(data_dir, "manifest.json")) as fh:
        manifest = json.load(fh)
    if "splits" not in manifest or split not in manifest["splits"]:
        raise ValueError(f"{data_dir}/manifest.json has no split {split!r} (made without --scenes?)")
    files = manifest["splits"][split]["files"]
    images = [_crop(_load(os.path.join(data_dir, f["file"]))) for f in files]
    labels = np.array([0 if f["file"].split("/")[1] == "original" else 1 for f in files])
    pred = predict(model, images)
    groups: dict = defaultdict(list)
    for f, y, p in zip(files, labels, pred):
        scene = f["params"].get("scene", {})
        groups[(int(y), scene.get("photo") or scene.get("kind", "?"))].append(bool(p == y))
    rows = [{"class": ("original", "recaptured")[y], "source": src, "patches": len(v), "accuracy": float(np.mean(v))}
            for (y, src), v in sorted(groups.items())]
    return {"split": split, "patches": int(len(labels)), "accuracy": float(np.mean(pred == labels)), "rows": rows}


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def jpeg(model, folder: str, qualities: Sequence[int] = (95, 75)) -> dict:
    """Accuracy on a labelled folder as stored and after re-saving every image (both classes) as JPEG."""
    from recapfast.data.folder import discover

    samples = discover(folder)
    images = [_crop(_load(s.path)) for s in samples]
    labels = np.array([s.label for s in samples])
    res = {"folder": os.path.basename(os.path.normpath(folder)), "patches": int(len(labels)), "rows": []}
    for q in (None, *qualities):
        imgs = images if q is None else [_jpeg(im, q) for im in images]
        pred = predict(model, imgs)
        per = [float(np.mean(pred[labels == c] == c)) if np.any(labels == c) else None for c in (0, 1)]
        res["rows"].append({"jpeg_quality": q, "accuracy": float(np.mean(pred == labels)),
                            "accuracy_per_class": per})
    return res


def tiles(model, folder: str) -> dict:
    """Per file: the share of its 64 px tiles (grid from the top-left corner) classified as the file's label."""
    from recapfast.data.folder import discover

    rows, right, total = [], 0, 0
    for s in discover(folder):
        img = _load(s.path)
        h, w = img.shape[0] // PATCH, img.shape[1] // PATCH
        if h == 0 or w == 0:
            continue
        t = img[:h * PATCH, :w * PATCH].reshape(h, PATCH, w, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(-1, PATCH, PATCH, 3)
        ok = int(np.sum(predict(model, list(t)) == s.label))
        rows.append({"file": os.path.relpath(s.path, folder).replace(os.sep, "/"), "label": int(s.label),
                     "tiles": int(len(t)), "correct": ok, "accuracy": ok / len(t)})
        right, total = right + ok, total + len(t)
    return {"folder": os.path.basename(os.path.normpath(folder)), "tiles": total,
            "accuracy": right / total if total else float("nan"), "rows": rows}


def global_features(x: np.ndarray) -> np.ndarray:
    """Per-channel mean, std and 16-bin histogram of uint8 NHWC images."""
    xf = x.astype(np.float64) / 255.0
    feats = [xf.mean(axis=(1, 2)), xf.std(axis=(1, 2))]
    for c in range(3):
        h = np.stack([np.histogram(im[..., c], bins=16, range=(0, 256))[0] for im in x]).astype(np.float64)
        feats.append(h / h.sum(axis=1, keepdims=True))
    return np.concatenate(feats, axis=1)


def globalstats(folder: str, limit: int = 1000, seed: int = 0) -> dict:
    """Held-out accuracy of a logistic regression on :func:`global_features` (half the images train it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from recapfast.data.folder import discover

    samples = discover(folder)
    rng = np.random.default_rng(seed)
    picked = []
    for c in (0, 1):
        idx = [i for i, s in enumerate(samples) if s.label == c]
        picked += list(rng.permutation(idx)[:limit])
    picked = list(rng.permutation(picked))
    x = np.stack([_crop(_load(samples[i].path)) for i in picked])
    y = np.array([samples[i].label for i in picked])
    f = StandardScaler().fit_transform(global_features(x))
    n = len(y) // 2
    clf = LogisticRegression(max_iter=2000).fit(f[:n], y[:n])
    return {"folder": os.path.basename(os.path.normpath(folder)), "images": int(len(y)), "train": n,
            "heldout_accuracy": float(clf.score(f[n:], y[n:]))}


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m recapfast.engine.shortcuts", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("sources")
    a.add_argument("model")
    a.add_argument("data")
    a.add_argument("--split", default="test")
    b = sub.add_parser("jpeg")
    b.add_argument("model")
    b.add_argument("folder")
    b.add_argument("--quality", default="95,75")
    c = sub.add_parser("globalstats")
    c.add_argument("folder")
    d = sub.add_parser("tiles")
    d.add_argument("model")
    d.add_argument("folder")
    for p in (a, b, c, d):
        p.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from recapfast.errors import UserError

    try:
        if args.cmd == "globalstats":
            res = globalstats(args.folder)
        else:
            from recapfast.models.zoo import load_recapfast

            from recapfast.models.checkpoint import file_sha256

            model = load_recapfast(args.model).eval()
            if args.cmd == "sources":
                res = sources(model, args.data, args.split)
            elif args.cmd == "tiles":
                res = tiles(model, args.folder)
            else:
                res = jpeg(model, args.folder, [int(q) for q in args.quality.split(",")])
            res["model"], res["model_sha256"] = args.model, file_sha256(args.model)
    except (UserError, ValueError, OSError) as err:
        print(f"recapfast: {err}", file=sys.stderr)
        return 1
    text = json.dumps(res, indent=1)
    if args.json:
        from recapfast.io import atomic

        atomic.write_text(args.json, text + "\n", mkdir=True)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
