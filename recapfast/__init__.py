"""recapfast: adversarial security of image-forensics CNNs (LaplacianCNN, FGSM/LLCM, robust training).

Public API (ARCHITECTURE.md):
    model = recapfast.load_model("baseline")          # or "robust", or a .safetensors path
    model = recapfast.load_detector("m.pt2")          # any --model spec (recapfast.models.zoo): .pt2, pkg.module:factory
    x_adv = recapfast.fgsm(model, x, y, eps)
    x_adv = recapfast.llcm(model, x, y, eps)
    res   = recapfast.sweep(model, x, y, eps=[1, 2, 3, 4, 5], attacks=("fgsm", "llcm"))
    x_adv = recapfast.bim(model, x, y, eps)           # also illc, pgd, mifgsm (recapfast.attacks.iterative)
    x_adv = recapfast.apgd(model, x, y, eps)          # APGD-CE; recapfast.square: black-box Square Attack
    s     = recapfast.ssim(x_adv, x)                  # per-image SSIM; recapfast.psnr likewise

The attacks take pixel units; float input evidently in [0, 1] is rejected unless ``input_range=`` says
what it is (recapfast.models.pixels).
"""
from recapfast.attacks import apgd as _apgd
from recapfast.attacks import single_step as _attacks
from recapfast.attacks import iterative as _iterative
from recapfast.attacks import square as _square
from recapfast.attacks.single_step import SweepResult
from recapfast.models.laplacian import LaplacianCNN
from recapfast.models.checkpoint import load_model, save_checkpoint
from recapfast.metrics import psnr, ssim
from recapfast.models.pixels import pixel_api
from recapfast.models.zoo import load_detector

fgsm = pixel_api(_attacks.fgsm)
llcm = pixel_api(_attacks.llcm)
sweep = pixel_api(_attacks.sweep)
bim = pixel_api(_iterative.bim)
illc = pixel_api(_iterative.illc)
pgd = pixel_api(_iterative.pgd)
mifgsm = pixel_api(_iterative.mifgsm)
apgd = pixel_api(_apgd.apgd)
square = pixel_api(_square.square)

__version__ = "0.1.0"
__all__ = ["LaplacianCNN", "fgsm", "llcm", "sweep", "SweepResult", "load_model", "load_detector", "save_checkpoint",
           "bim", "illc", "pgd", "mifgsm", "apgd", "square", "ssim", "psnr", "__version__"]
