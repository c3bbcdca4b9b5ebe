"""recapfast: adversarial security of image-forensics CNNs (LaplacianCNN, FGSM/LLCM, robust training).

Public API (ARCHITECTURE.md):
    model = recapfast.load_model("baseline")          # or "robust", or a .safetensors path
    x_adv = recapfast.fgsm(model, x, y, eps)
    x_adv = recapfast.llcm(model, x, y, eps)
    res   = recapfast.sweep(model, x, y, eps=[1, 2, 3, 4, 5], attacks=("fgsm", "llcm"))
    x_adv = recapfast.bim(model, x, y, eps)           # also illc, pgd, mifgsm (recapfast.iterative)
    s     = recapfast.ssim(x_adv, x)                  # per-image SSIM; recapfast.psnr likewise
"""
from .attacks import SweepResult, fgsm, llcm, sweep
from .model import LaplacianCNN
from .checkpoint import load_model, save_checkpoint
from .iterative import bim, illc, mifgsm, pgd
from .metrics import psnr, ssim

__version__ = "0.1.0"
__all__ = ["LaplacianCNN", "fgsm", "llcm", "sweep", "SweepResult", "load_model", "save_checkpoint", "bim", "illc",
           "pgd", "mifgsm", "ssim", "psnr", "__version__"]
