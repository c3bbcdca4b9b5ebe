"""Markdown for bench results (bench/results/<machine>.md) and the README performance table."""
from __future__ import annotations


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every issue target the results can speak to."""
    out = []
    w = results["workloads"]
    for entry in w.get("eval_sweep", {}).get("sizes", []):
        if entry["size"] not in (64, 256):
            continue
        for mode, need in (("model-only", 3.0), ("end-to-end", 2.5)):
            row = {r["contender"]: r for r in entry["modes"].get(mode, [])}
            rf = row.get("recapfast-ext") or row.get("recapfast-torch")
            if rf and rf["speedup_vs_torchattacks"] is not None:
                out.append((f"eval sweep {entry['size']} px {mode} >= {need}x torchattacks loop",
                            f"{rf['speedup_vs_torchattacks']:.2f}x ({rf['contender']})",
                            rf["speedup_vs_torchattacks"] >= need))
            for peer in ("foolbox", "art"):
                if rf and peer in row:
                    out.append((f"eval sweep {entry['size']} px {mode} ahead of {peer}",
                                f"{row[peer]['seconds'] / rf['seconds']:.2f}x", rf["seconds"] < row[peer]["seconds"]))
        agree = entry.get("agreement", [])
        if agree:
            same = all(a["fgsm_identical"] for a in agree if a["fgsm"] is not None)
            out.append((f"eval sweep {entry['size']} px identical FGSM accuracy (all contenders)",
                        "identical" if same else "differs (see agreement)", same))
    sc = w.get("scaling")
    if sc and "recapfast-ext" in sc.get("marginal_ratio_vs_torchattacks", {}):
        r = sc["marginal_ratio_vs_torchattacks"]["recapfast-ext"]
        out.append(("scaling: marginal cost per eps <= 40% of the loop's", f"{100 * r:.0f}%", r <= 0.4))
    ts = w.get("train_step")
    if ts:
        for row in ts["rows"]:
            need = ts["targets"].get(row["mode"])
            if need:
                out.append((f"train step {row['mode']} <= {need}x plain", f"{row['ratio_vs_plain']:.2f}x",
                            row["ratio_vs_plain"] <= need))
    return out


def eval_table(results: dict, sizes=None, contenders=None) -> list[str]:
    lines = ["| px | contender | model-only img/s | speedup | end-to-end img/s | speedup |",
             "|---:|---|---:|---:|---:|---:|"]
    labels = {c["name"]: c["label"] for c in results["contenders"]}
    for entry in results["workloads"].get("eval_sweep", {}).get("sizes", []):
        if sizes and entry["size"] not in sizes:
            continue
        mo = {r["contender"]: r for r in entry["modes"].get("model-only", [])}
        ee = {r["contender"]: r for r in entry["modes"].get("end-to-end", [])}
        for name in dict.fromkeys([*mo, *ee]):
            if contenders and name not in contenders:
                continue
            a, b = mo.get(name, {}), ee.get(name, {})
            lines.append(f"| {entry['size']} | {labels.get(name, name)} | {a.get('images_per_s', '–')} | "
                         f"{_x(a.get('speedup_vs_torchattacks'))} | {b.get('images_per_s', '–')} | "
                         f"{_x(b.get('speedup_vs_torchattacks'))} |")
    return lines


def markdown(results: dict) -> str:
    m, w = results["meta"], results["workloads"]
    L = [f"# recapfast benchmark — {m['machine']} ({m['cores']} cores)", "",
         f"torch {m['torch']}, {m['torch_threads']} torch thread(s), GPU: {m['gpu'] or 'none'}, {m['date']}, "
         f"commit {m['git_commit']}, mode `{m['mode']}`, {m.get('seconds_total', '?')} s in all.", "",
         f"**Contention:** 1-min load average {m['load_avg_1min_at_start']} at the start and "
         f"{m.get('load_avg_1min_at_end')} at the end on {m['cores']} cores (a shared machine: other jobs were "
         "running). Absolute numbers are noisy; contenders alternate within each repetition, the statistic is the "
         "median, and every ratio compares contenders of the same run.", "",
         f"Model (all contenders): `{results['model']['model']}` — {results['model']['source']}; "
         f"{results['model']['parameters']} parameters, widths {results['model']['widths']}.", "",
         "## Contenders", "", "| contender | version | status | LLCM |", "|---|---|---|---|"]
    for c in results["contenders"]:
        status = "ok" if c["status"] == "ok" else f"**missing** ({c['missing_reason']})"
        L.append(f"| {c['label']} | {c['version'] or '–'} | {status} | {c['llcm']} |")
    if any(c["status"] != "ok" for c in results["contenders"]):
        L += ["", f"Install the missing peers with: `{results['peer_install']}`"]
    notes = [f"- {c['label']}: {n}" for c in results["contenders"] for n in c["notes"]]
    if notes:
        L += ["", *notes]
    tg = targets(results)
    if tg:
        L += ["", "## Targets (issue 4)", "", "| target | measured | met |", "|---|---|---|"]
        L += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in tg]
    ev = w.get("eval_sweep")
    if ev:
        L += ["", "## Eval sweep", "",
              f"Clean + FGSM and LLCM at eps {', '.join(f'{e:g}' for e in ev['eps'])} (11 predictions per image), "
              f"quantized to uint8. Model-only: decoded patches in memory. End-to-end: the PNG folder streamed "
              f"through recapfast's loader (decode + crop, {ev['workers_end_to_end']} workers) for every contender. "
              f"Speedup = torchattacks-loop seconds / contender seconds; median of {ev['reps']}.", ""]
        L += eval_table(results)
        for entry in ev["sizes"]:
            L += ["", f"### {entry['size']} px: {entry['images']} images, batch {entry['batch_size']} — accuracy (%)", "",
                  "| contender | clean | " + " | ".join(f"FGSM {e:g}" for e in ev["eps"]) + " | "
                  + " | ".join(f"LLCM {e:g}" for e in ev["eps"]) + " |",
                  "|---|---:|" + "---:|" * (2 * len(ev["eps"]))]
            for name, acc in entry.get("accuracy", {}).items():
                llcm = acc["llcm"] or [None] * len(ev["eps"])
                L.append(f"| {name} | {_pct(acc['clean'])} | " + " | ".join(_pct(v) for v in acc["fgsm"]) + " | "
                         + " | ".join(_pct(v) for v in llcm) + " |")
            for a in entry.get("agreement", []):
                f, l = a["fgsm"], a["llcm"]
                text = (f"- {a['contender']} vs {entry['agreement_reference']}: FGSM "
                        + ("identical per image" if f and not f["image_mismatches"] else
                           f"{f['image_mismatches']} image-level differences, correct counts differ by "
                           f"{f['correct_count_diff_per_eps']} (float rounding of the [0,1] round trip)" if f else "n/a"))
                if l is not None:
                    text += ("; LLCM identical per image" if not l["image_mismatches"] else
                             f"; LLCM differs on {l['image_mismatches']} image x eps, "
                             f"{l['image_mismatches_on_clean_correct']} of them on clean-correct images "
                             f"({l['clean_misclassified']} images are misclassified clean)")
                if a["contender"] == "torchattacks" and l is not None and l["image_mismatches"]:
                    text += (" — by design: torchattacks' least-likely mode excludes the TRUE label, recapfast "
                             "takes argmin over ALL classes (paper eq. 3); they differ only on images misclassified "
                             "when clean")
                L.append(text)
    sc = w.get("scaling")
    if sc:
        L += ["", "## Scaling with the number of eps", "",
              f"FGSM + LLCM, one batch of {sc['batch']} images at {sc['size']} px in memory; seconds (median of {sc['reps']}).",
              "", "| contender | " + " | ".join(f"{n} eps" for n in sc["eps_counts"]) + " | s per extra eps | vs loop |",
              "|---|" + "---:|" * (len(sc["eps_counts"]) + 2)]
        for name, secs in sc["seconds"].items():
            L.append(f"| {name} | " + " | ".join(f"{s:.3f}" for s in secs) + f" | "
                     f"{sc['marginal_seconds_per_eps'][name]:.4f} | "
                     f"{100 * sc['marginal_ratio_vs_torchattacks'].get(name, float('nan')):.0f}% |")
    ts = w.get("train_step")
    if ts:
        L += ["", "## Training step", "", f"Batch {ts['batch']}, {ts['size']} px, Adam, backend {ts.get('backend')}; "
              f"median of {ts['reps']}.", "", "| mode | ms/step | vs plain | target |", "|---|---:|---:|---:|"]
        for r in ts["rows"]:
            tgt = ts["targets"].get(r["mode"])
            L.append(f"| {r['mode']} | {r['ms_per_step']} | {r['ratio_vs_plain']:.2f}x | {'<= %gx' % tgt if tgt else '–'} |")
    rb = w.get("train_robustness")
    if rb:
        st = rb["start_accuracy"]
        L += ["", f"Robustness: the benchmark model (clean {_pct(st['clean_accuracy'])}%, FGSM eps 2 "
              f"{_pct(st['fgsm_eps2_accuracy'])}%) fine-tuned {rb['iters']} iterations (batch {rb['batch']}, lr "
              f"{rb['lr']:g}, {rb['train_images']} training images, same batches) per mode; accuracy on "
              f"{rb['eval_images']} held-out synthetic images.", "",
              "| mode | clean % | FGSM eps 2 % |", "|---|---:|---:|"]
        L += [f"| {r['mode']} | {_pct(r['clean_accuracy'])} | {_pct(r['fgsm_eps2_accuracy'])} |" for r in rb["rows"]]
    dp = w.get("data_pipeline")
    if dp:
        L += ["", "## Data pipeline (decode + patch only)", "", "| px | files | workers | img/s |", "|---:|---:|---:|---:|"]
        L += [f"| {r['size']} | {r['files']} | {r['workers']} | {r['images_per_s']} |" for r in dp["rows"]]
    kn = w.get("kernels")
    if kn:
        L += ["", "## Kernels (C++ ext vs PyTorch reference)", "", "| op | px | batch | ext ms | torch ms | speedup |",
              "|---|---:|---:|---:|---:|---:|"]
        L += [f"| {r['op']} | {r['size']} | {r['batch']} | {r['ext_ms']:.2f} | {r['torch_ms']:.2f} | {r['speedup']:.2f}x |"
              for r in kn["rows"]]
    return "\n".join(L) + "\n"
