"""Renderings of evaluation results: the paper's tables (markdown), JSON and CSV."""
from __future__ import annotations

import csv
import io
import json
import math


def pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def num(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def eps_label(e: float) -> str:
    return f"{e:g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def clean_line(result) -> str:
    per_class = ", ".join(f"{name} {pct(a)} (n={n})" for name, a, n in
                          zip(result.class_names, result.clean_accuracy_per_class, result.patches_per_class))
    line = (f"Clean accuracy: {pct(result.clean_accuracy)} on {result.patches} patches "
            f"({result.patch_size}x{result.patch_size}) from {result.files} files [{per_class}]")
    nonfinite = getattr(result, "nonfinite", 0)
    if nonfinite:
        line += (f"\n\nWARNING: {nonfinite} patch(es) got NaN or Inf logits from the model; they are left out of "
                 "every count (no accuracy, success rate or score includes them)")
    return line


def method_labels(result) -> dict:
    """Row label of each attack: its name, or for the cumulative rows of an ``auto`` cascade the chain that
    produced them (``FGSM > APGD``: the accuracy left after FGSM, then APGD on the survivors)."""
    label = {name: name.upper() for name in result.attacks}
    cascade = ((getattr(result, "worst_case", None) or {}).get("cascade") or {}).get("order", [])
    for i, name in enumerate(cascade[1:], start=2):
        label[name] = " > ".join(a.upper() for a in cascade[:i])
    return label


def result_markdown(result) -> str:
    """Paper-style tables: accuracy under attack (Tables 2/3 layout), success rate, distortion."""
    head = ["method"] + [f"eps={eps_label(e)}" for e in result.eps]
    acc_rows, asr_rows, dist_rows = [], [], []
    label = method_labels(result)
    for name in result.attacks:
        cells = [result.cell(name, e) for e in result.eps]
        acc_rows.append([label[name]] + [pct(c.accuracy) for c in cells])
        asr_rows.append([label[name]] + [pct(c.success_rate) for c in cells])
        for c in cells:
            dist_rows.append([label[name], eps_label(c.eps), num(c.mean_linf), num(c.mean_l2), num(c.mean_psnr),
                              num(getattr(c, "mean_ssim", float("nan")), 4)])
    worst = getattr(result, "worst_case", None)
    if worst:
        acc_rows.append(["WORST CASE"] + [pct(c["accuracy"]) for c in worst["cells"]])
    title = f"model `{result.model}`" if result.model else "model"
    parts = [f"### {title}", "", clean_line(result), ""]
    if result.cells:
        parts += ["Detection accuracy of adversarial images" + ("" if result.quantized else " (not quantized)"), "",
                  _table(head, acc_rows), "", "Attack success rate (correct clean decisions flipped)", "",
                  _table(head, asr_rows), ""]
        metrics = getattr(result, "metrics", "full")
        if metrics != "none":
            parts += ["Perturbation size (pixel units; PSNR over changed patches; SSIM "
                      + ("Wang et al. 2004, 11x11 Gaussian window, sigma 1.5)" if metrics == "full" else
                         "not computed: --metrics fast)"), "",
                      _table(["method", "eps", "mean L-inf", "mean L2", "mean PSNR (dB)", "mean SSIM"], dist_rows), ""]
        iterative = getattr(result, "iterative", None)
        if iterative:
            steps = iterative["steps"]
            steps = ", ".join(f"eps {k}: {v}" for k, v in steps.items()) if isinstance(steps, dict) else str(steps)
            parts += [f"Iterative attacks (run per eps): steps {steps}; step size {iterative['step_size']:g} grey "
                      f"level(s); PGD random start {'on' if iterative['pgd_random_start'] else 'off'} "
                      f"(seed {iterative['pgd_seed']}); MI-FGSM decay {iterative['mifgsm_decay']:g}; ILLC target: "
                      f"{iterative['illc_target']}", ""]
    from recapfast.reporting.trust import trust_markdown

    parts += trust_markdown(result)
    uap = getattr(result, "uap", None)
    if uap:
        per_class = ", ".join(f"{name} {pct(a)}" for name, a in zip(result.class_names, uap["accuracy_per_class"]))
        parts += [f"Universal perturbation ({uap.get('method', '')}, xi {uap['xi']:g}, made on "
                  f"`{uap.get('model') or '?'}`)", "",
                  _table(["fooling rate", "accuracy with UAP", "per class", "mean L-inf", "mean L2",
                          "mean PSNR (dB)", "mean SSIM"],
                         [[pct(uap["fooling_rate"]), pct(uap["accuracy"]), per_class, num(uap["mean_linf"]),
                           num(uap["mean_l2"]), num(uap["mean_psnr"]), num(uap["mean_ssim"], 4)]]),
                  "", "Fooling rate: patches whose prediction changes when the UAP is added.", ""]
    if result.errors:
        parts += [f"{len(result.errors)} file(s) skipped:", ""]
        parts += [f"- `{e['path']}`: {e['error']}" for e in result.errors[:50]]
        if len(result.errors) > 50:
            parts.append(f"- ... and {len(result.errors) - 50} more (see --json)")
        parts.append("")
    if result.seconds > 0:
        parts.append(f"{result.patches} patches in {result.seconds:.2f} s ({result.images_per_second:.1f} patches/s)")
    return "\n".join(parts).rstrip() + "\n"


def _jsonable(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def result_json(result) -> str:
    return json.dumps(_jsonable(result.to_dict()), indent=2)


CSV_FIELDS = ["model", "attack", "eps", "accuracy", "success_rate", "correct", "patches", "mean_linf", "mean_l2",
              "mean_psnr", "mean_ssim", "auc", "eer"]


class _EmptyForUndefined:
    """Rows with NaN/Inf (JSON null, markdown n/a) and None as empty cells, never the text ``nan``."""

    def __init__(self, writer):
        self.writer = writer

    def writerow(self, row: dict) -> None:
        self.writer.writerow({k: "" if v is None else v for k, v in _jsonable(row).items()})


def result_csv(result) -> str:
    out = io.StringIO()
    table = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n", restval="")
    table.writeheader()
    writer = _EmptyForUndefined(table)
    detection = getattr(result, "detection", None) or {}
    det = {(c["attack"], c["eps"]): c for c in [detection["clean"], *detection["cells"]]} if detection else {}
    roc = lambda key: {"auc": det[key]["auc"], "eer": det[key]["eer"]} if key in det else {}  # noqa: E731
    writer.writerow({"model": result.model, "attack": "clean", "eps": 0, "accuracy": result.clean_accuracy,
                     "success_rate": "", "correct": result.clean_correct, "patches": result.patches,
                     "mean_linf": 0, "mean_l2": 0, "mean_psnr": "", "mean_ssim": 1.0, **roc(("clean", 0.0))})
    for c in result.cells:
        writer.writerow({"model": result.model, "attack": c.attack, "eps": c.eps, "accuracy": c.accuracy,
                         "success_rate": c.success_rate, "correct": c.correct, "patches": result.patches,
                         "mean_linf": c.mean_linf, "mean_l2": c.mean_l2, "mean_psnr": c.mean_psnr,
                         "mean_ssim": getattr(c, "mean_ssim", ""), **roc((c.attack, c.eps))})
    for c in (getattr(result, "worst_case", None) or {}).get("cells", []):
        writer.writerow({"model": result.model, "attack": "worst_case", "eps": c["eps"], "accuracy": c["accuracy"],
                         "correct": c["correct"], "patches": result.patches})
    uap = getattr(result, "uap", None)
    if uap:
        # success_rate holds the fooling rate for the UAP row (prediction changed / patches).
        writer.writerow({"model": result.model, "attack": "uap", "eps": uap["xi"], "accuracy": uap["accuracy"],
                         "success_rate": uap["fooling_rate"], "correct": uap["correct"], "patches": result.patches,
                         "mean_linf": uap["mean_linf"], "mean_l2": uap["mean_l2"], "mean_psnr": uap["mean_psnr"],
                         "mean_ssim": uap["mean_ssim"]})
    return out.getvalue()
