"""JPEG survival: does an adversarial image still fool the detector after a JPEG re-save?

Every real image is re-saved on its way to a detector (upload, messaging, social networks), so a
perturbation that only works on the exact PNG is a weaker threat.  :func:`jpeg_roundtrip` encodes
each uint8 image with Pillow (``Image.save(format="JPEG", quality=q)`` with Pillow's defaults: 4:2:0
chroma subsampling at these qualities, standard quantization tables, baseline) and decodes it back
to RGB uint8.  Float (``--no-quantize``) images are rounded to uint8 first: JPEG holds 8-bit samples.
The images are copied to the host for Pillow (one copy per batch and quality).
"""
from __future__ import annotations

import io

import numpy as np
import torch


def parse_qualities(text: str) -> list[int]:
    """'75,90' -> [75, 90]; each quality an integer in 1..95 (Pillow's useful range), at least one, no empty item
    (``,`` or ``''`` is refused like ``--eps ''``: the JPEG rows never vanish silently)."""
    parts = [p.strip() for p in str(text).split(",")]
    if any(not p for p in parts):
        raise ValueError(f"{text!r}: give one or more comma-separated JPEG qualities 1..95, e.g. 75,90")
    out = []
    for part in parts:
        try:
            q = int(part)
        except ValueError:
            raise ValueError(f"{text!r}: JPEG qualities are integers 1..95, e.g. 75,90") from None
        if not 1 <= q <= 95:
            raise ValueError(f"{text!r}: JPEG quality {q} is outside 1..95")
        out.append(q)
    return list(dict.fromkeys(out))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images
    return torch.round(images.to(torch.float32)).clamp(0, 255).to(torch.uint8)


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """[N, 3, H, W] images (uint8, or float in [0, 255]) after a Pillow JPEG encode/decode: uint8, same device."""
    from PIL import Image

    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
    host = to_uint8(images).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    out = np.empty_like(host)
    for i, arr in enumerate(host):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


__all__ = ["parse_qualities", "to_uint8", "jpeg_roundtrip"]
