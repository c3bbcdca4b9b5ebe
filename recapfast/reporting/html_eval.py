"""The `eval --html` report: the evaluation's tables and checks (accuracy per attack and eps, worst case, masking
checks, detection metrics, as the markdown report has them), a ROC curve of the clean scores, one sortable row per
file (thumbnail, label, decision, p(recaptured), flip_eps) and example adversarial patches with their perturbation
magnified.  Self-contained like the screen report (recapfast.reporting.html_report).

The per-file rows, the ROC curve and the examples come from one extra pass over the first ``MAX_FILES`` files'
center patches (``--size``): a clean forward and the shared-gradient FGSM + LLCM sweep at the run's eps (one
gradient per attack), which gives each file's flip_eps as `screen` defines it.
"""
from __future__ import annotations

import html
import re

import numpy as np
import torch

from recapfast.reporting.html_report import MAX_THUMBS, _page, data_uri

MAX_FILES = 2000            # files in the per-file pass (rows and ROC); the tables cover every file
EXAMPLES = 4
ZOOM = 3                    # example patches are shown this many times larger (nearest neighbour)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def markdown_html(md: str) -> str:
    """The subset of markdown recapfast's reports use: headings, tables, bullet lists, paragraphs."""
    out, table, items = [], [], []

    def flush():
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table
                    if not re.fullmatch(r"\|?[\s|:-]+\|?", line.strip())]
            head, body = rows[0], rows[1:]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|"):
            if items:
                flush()
            table.append(s)
            continue
        if re.match(r"^\s*[-*] ", line):
            if table:
                flush()
            items.append(re.sub(r"^\s*[-*] ", "", line))
            continue
        flush()
        if not s:
            continue
        m = re.match(r"^(#+)\s+(.*)", s)
        if m:
            level = min(6, len(m.group(1)) + 1)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        else:
            out.append(f"<p>{_inline(s)}</p>")
    flush()
    return "\n".join(out)


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(FPR, TPR, AUC) for positive class 1; ties are one ROC point (trapezoids count them half)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    p, n = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    fpr, tpr = np.r_[0.0, fp / n], np.r_[0.0, tp / p]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def roc_svg(fpr: np.ndarray, tpr: np.ndarray, auc: float, n: int) -> str:
    size, pad = 300, 40
    pts = " ".join(f"{pad + size * f:.1f},{pad + size * (1 - t):.1f}" for f, t in zip(fpr, tpr))
    ticks = "".join(f"<text x=\"{pad + size * v:.0f}\" y=\"{pad + size + 16}\" font-size=\"11\" "
                    f"text-anchor=\"middle\">{v:g}</text><text x=\"{pad - 6}\" y=\"{pad + size * (1 - v) + 4:.0f}\" "
                    f"font-size=\"11\" text-anchor=\"end\">{v:g}</text>" for v in (0, 0.25, 0.5, 0.75, 1))
    return (f"<svg width=\"{size + 2 * pad}\" height=\"{size + 2 * pad + 10}\" role=\"img\" "
            f"aria-label=\"ROC curve\"><rect x=\"{pad}\" y=\"{pad}\" width=\"{size}\" height=\"{size}\" fill=\"none\" "
            f"stroke=\"#888\"/><line x1=\"{pad}\" y1=\"{pad + size}\" x2=\"{pad + size}\" y2=\"{pad}\" stroke=\"#bbb\" "
            f"stroke-dasharray=\"4 4\"/><polyline fill=\"none\" stroke=\"#b2182b\" stroke-width=\"2\" points=\"{pts}\"/>"
            f"{ticks}<text x=\"{pad + size / 2}\" y=\"{pad + size + 34}\" font-size=\"12\" text-anchor=\"middle\">"
            f"false positive rate (original called recaptured)</text><text x=\"12\" y=\"{pad + size / 2}\" "
            f"font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 12 {pad + size / 2})\">true positive "
            f"rate</text><text x=\"{pad + size - 6}\" y=\"{pad + size - 8}\" font-size=\"12\" text-anchor=\"end\">"
            f"AUC {auc:.3f} ({n} patches)</text></svg>")


def per_file_pass(model, samples, size: int, eps, device, batch: int = 64) -> dict:
    """Clean p, flip_eps (FGSM/LLCM at ``eps``) and the thumbnail of each of the first MAX_FILES files' center
    patch, plus up to EXAMPLES (clean, adversarial) patch pairs that FGSM at the largest eps flips."""
    from recapfast.attacks.single_step import sweep
    from recapfast.data.folder import DecodeError, decode, to_patches

    rows, examples, pending = [], [], []
    eps = sorted(float(e) for e in eps)

    def run():
        x = torch.cat([p for _, _, p in pending]).to(device)
        y = torch.tensor([s.label for s, _, _ in pending], device=device)
        res = sweep(model, x, y, eps=eps, attacks=("fgsm", "llcm"), return_images=True)
        prob = torch.softmax(res.clean_logits.float(), 1)[:, 1].cpu().numpy()
        pred = res.clean_logits.argmax(1)
        for i, (sample, thumb, _) in enumerate(pending):
            flips = [e for k, e in enumerate(eps)
                     if any(bool(res.predictions[a][k, i] != pred[i]) for a in ("fgsm", "llcm"))]
            rows.append({"path": sample.path, "label": sample.label, "p": float(prob[i]), "pred": int(pred[i]),
                         "flip_eps": flips[0] if flips else None, "thumb": thumb})
            if len(examples) < EXAMPLES and bool(res.predictions["fgsm"][-1, i] != pred[i]):
                examples.append({"path": sample.path, "eps": eps[-1], "clean": x[i].cpu(),
                                 "adv": res.images["fgsm"][-1, i].cpu(), "p": float(prob[i])})
        pending.clear()

    for k, sample in enumerate(samples[:MAX_FILES]):
        try:
            img, _ = decode(sample.path)
            patch = to_patches(img, size)
        except DecodeError:
            continue
        pending.append((sample, data_uri(img) if k < MAX_THUMBS else "", patch))
        if len(pending) == batch:
            run()
    if pending:
        run()
    return {"rows": rows, "examples": examples, "eps": eps}


def _patch_uri(chw: torch.Tensor) -> str:
    img = chw.permute(1, 2, 0).numpy()
    img = np.repeat(np.repeat(img, ZOOM, axis=0), ZOOM, axis=1)
    return data_uri(np.clip(np.rint(img), 0, 255).astype(np.uint8), longest=10_000, fmt="PNG")


def eval_html(markdown: str, extra: dict, title: str, class_names=("original", "recaptured")) -> str:
    rows_data = extra["rows"]
    body = [f"<h1>{html.escape(title)}</h1>", markdown_html(markdown)]
    if rows_data:
        scores = np.array([r["p"] for r in rows_data], dtype=np.float64)
        labels = np.array([r["label"] for r in rows_data], dtype=np.int64)
        logit = np.log(np.clip(scores, 1e-12, 1)) - np.log(np.clip(1 - scores, 1e-12, 1))
        fpr, tpr, auc = roc_points(logit, labels)
        body += ["<h2>ROC curve (clean)</h2>",
                 f"<p class=\"note\">Clean center patches of the first {len(rows_data)} usable files; positive class "
                 "recaptured; score = log-odds of p(recaptured).</p>", roc_svg(fpr, tpr, auc, len(rows_data))]
    if extra["examples"]:
        body.append("<h2>Example adversarial patches</h2><p class=\"note\">FGSM at eps "
                    f"{extra['eps'][-1]:g} grey levels; perturbation shown as 128 + (adversarial - clean) x "
                    f"{127 / extra['eps'][-1]:.0f}, i.e. magnified to the full grey range; patches {ZOOM}x.</p>")
        cells = []
        for ex in extra["examples"]:
            delta = (ex["adv"] - ex["clean"].float()) * (127.0 / ex["eps"]) + 128.0
            cells.append(f"<tr><td>{html.escape(ex['path'])}<br>clean p(recaptured) {ex['p']:.3f}</td>"
                         f"<td><img alt=\"clean\" src=\"{_patch_uri(ex['clean'].float())}\"></td>"
                         f"<td><img alt=\"adversarial\" src=\"{_patch_uri(ex['adv'])}\"></td>"
                         f"<td><img alt=\"perturbation\" src=\"{_patch_uri(delta)}\"></td></tr>")
        body.append("<table><thead><tr><th>file</th><th>clean</th><th>adversarial</th><th>perturbation "
                    "(magnified)</th></tr></thead><tbody>" + "".join(cells) + "</tbody></table>")
    eps_max = extra["eps"][-1] if extra["eps"] else 0
    trs = []
    for r in rows_data:
        flip = r["flip_eps"]
        path = html.escape(r["path"])
        thumb = f"<img alt=\"photo\" src=\"{r['thumb']}\">" if r["thumb"] else ""
        ok = "yes" if r["pred"] == r["label"] else "no"
        trs.append(f"<tr class=\"row\" data-path=\"{path}\" data-label=\"{class_names[r['label']]}\" "
                   f"data-decision=\"{class_names[r['pred']]}\" data-p=\"{r['p']}\" "
                   f"data-flip=\"{'' if flip is None else flip}\"><td>{path}</td><td>{thumb}</td>"
                   f"<td>{class_names[r['label']]}</td><td>{class_names[r['pred']]} ({ok})</td>"
                   f"<td class=\"num\">{r['p']:.3f}</td>"
                   f"<td class=\"num\">{'&gt;' + format(eps_max, 'g') if flip is None else format(flip, 'g')}</td></tr>")
    body += ["<h2>Files</h2><p class=\"note\">flip_eps: the smallest eps of the run at which FGSM or LLCM changes "
             "the decision on the file's center patch. Click a column to sort.</p>",
             "<table class=\"sortable\" id=\"files\"><thead><tr><th data-key=\"path\">path</th><th>photo</th>"
             "<th data-key=\"label\">label</th><th data-key=\"decision\">decision (correct)</th>"
             "<th data-key=\"p\" data-type=\"num\">p(recaptured)</th><th data-key=\"flip\" data-type=\"num\">"
             "flip_eps</th></tr></thead><tbody>\n" + "\n".join(trs) + "\n</tbody></table>"]
    return _page(title, body)


__all__ = ["eval_html", "markdown_html", "per_file_pass", "roc_points", "roc_svg"]
