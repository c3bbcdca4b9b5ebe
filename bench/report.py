"""Markdown for bench results (bench/results/<machine>.md), the targets, and the README tables."""
from __future__ import annotations


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _num(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def sweep_run(results: dict, threads: int | None = None) -> dict | None:
    """The eval-sweep run at ``threads`` (default: the first thread count, the one the README reports)."""
    runs = results["workloads"].get("eval_sweep", {}).get("runs", [])
    if not runs:
        return None
    if threads is None:
        return runs[0]
    return next((r for r in runs if r["threads"] == threads), None)


def _row(entry: dict, mode: str, name: str) -> dict | None:
    return next((r for r in entry["modes"].get(mode, []) if r["contender"] == name), None)


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every target of the performance issue the results can speak to."""
    out = []
    w = results["workloads"]
    run = sweep_run(results)
    if run:
        t = run["threads"]
        for entry in run["sizes"]:
            px = entry["size"]
            rf = _row(entry, "model-only", "recapfast-ext") or _row(entry, "model-only", "recapfast-torch")
            if rf is None:
                continue
            need = {64: 2.0, 256: 1.5}.get(px)
            if need and rf.get("vs_skilled") is not None:
                out.append((f"{px} px model-only >= {need}x the skilled 20-liner (CPU, {t} thread)",
                            f"{rf['vs_skilled']:.2f}x ({rf['contender']})", rf["vs_skilled"] >= need))
            if px in (64, 256) and rf.get("vs_torchattacks") is not None:
                out.append((f"{px} px model-only >= 6x the torchattacks loop (CPU, {t} thread)",
                            f"{rf['vs_torchattacks']:.2f}x", rf["vs_torchattacks"] >= 6.0))
            ratio = entry.get("eval_over_sweep", {}).get(rf["contender"])
            if ratio is not None and px in (64, 256):
                out.append((f"{px} px `recapfast eval` end to end (default metrics) <= 1.35x the model-only sweep",
                            f"{ratio:.2f}x", ratio <= 1.35))
            agree = entry.get("agreement", [])
            same = all(a["fgsm_identical"] for a in agree if a["fgsm"] is not None)
            if agree:
                out.append((f"{px} px identical FGSM accuracy (every contender)",
                            "identical" if same else "differs (see agreement)", same))
    ts = w.get("train_step")
    if ts:
        for row in ts["rows"]:
            need = ts["targets"].get(row["mode"])
            if need:
                out.append((f"train step {row['mode']} <= {need}x plain (CPU)", f"{row['ratio_vs_plain']:.2f}x",
                            row["ratio_vs_plain"] <= need))
    sp = w.get("screen_probe")
    if sp:
        out.append((f"screen probe cost <= {sp['target']:g}x no-probe (CPU)", f"{sp['probe_over_plain']:.2f}x",
                    sp["probe_over_plain"] <= sp["target"]))
    return out


def eval_table(results: dict, threads: int | None = None, sizes=None) -> list[str]:
    run = sweep_run(results, threads)
    labels = {c["name"]: c["label"] for c in results["contenders"]}
    lines = ["| px | contender | model-only img/CPU-s | vs 20-liner | vs torchattacks | end-to-end img/CPU-s | "
             "vs 20-liner | vs torchattacks |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    if run is None:
        return lines
    for entry in run["sizes"]:
        if sizes and entry["size"] not in sizes:
            continue
        names = dict.fromkeys(r["contender"] for mode in ("model-only", "end-to-end") for r in entry["modes"].get(mode, []))
        for name in names:
            a, b = _row(entry, "model-only", name) or {}, _row(entry, "end-to-end", name) or {}
            lines.append(f"| {entry['size']} | {labels.get(name, name)} | {_num(a.get('per_s_cpu'))} | "
                         f"{_x(a.get('vs_skilled'))} | {_x(a.get('vs_torchattacks'))} | {_num(b.get('per_s_cpu'))} | "
                         f"{_x(b.get('vs_skilled'))} | {_x(b.get('vs_torchattacks'))} |")
    return lines


def thread_lines(results: dict) -> list[str]:
    """One line per extra thread count: recapfast vs the 20-liner in CPU and wall time."""
    out = []
    runs = results["workloads"].get("eval_sweep", {}).get("runs", [])
    for run in runs[1:]:
        parts = []
        for entry in run["sizes"]:
            rf, sk = _row(entry, "model-only", "recapfast-ext"), _row(entry, "model-only", "skilled")
            if rf and sk:
                parts.append(f"{entry['size']} px {sk['cpu_s'] / rf['cpu_s']:.2f}x CPU / "
                             f"{sk['wall_s'] / rf['wall_s']:.2f}x wall")
        if parts:
            out.append(f"With {run['threads']} threads, recapfast (ext) vs the 20-liner, model-only: " + "; ".join(parts)
                       + ".")
    return out


def _floor_lines(fl: dict) -> list[str]:
    return [f"- {e['size']} px: {e['mflop_per_image']} MFLOP per image; convolution floor {e['conv_floor_ms_per_image']:.3f} "
            f"ms/image (oneDNN on the model's layer shapes: "
            + ", ".join(f"{layer['gflops']:g}" for layer in e["layers"]) + " GFLOP/s); recapfast's forward "
            f"{e['fast_forward_ms_per_image']:.3f} ms/image ({100 * e['fast_share_of_floor']:.0f}% of the floor), "
            f"plain channels_last PyTorch {e['plain_channels_last_forward_ms_per_image']:.3f} ms/image "
            f"({100 * e['plain_share_of_floor']:.0f}%)" for e in fl["sizes"]]


def _timed_section(title: str, setup: str, workload: dict, columns: list[str]) -> list[str]:
    """Heading, the setup sentence (ending in the workload's thread count and repetitions) and the header of a
    table whose first column is text and the others numbers."""
    return [f"## {title}", "", f"{setup}, {workload['threads']} thread(s); median of {workload['reps']}.", "",
            "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]


def auto_lines(auto: dict, source: str | None = None) -> list[str]:
    """The strong-attack table: `recapfast eval --attack auto` and APGD alone against the peers (CPU time)."""
    lines = [f"Strong attacks (FGSM + APGD-CE {auto['apgd_steps']} steps + Square {auto['square_queries']} queries, "
             f"1 restart each, eps {', '.join(f'{e:g}' for e in auto['eps'])}; CPU time, median of "
             f"{auto['rows'][0]['reps'] if auto['rows'] else '?'}"
             + (f"; [{source}]({source})" if source else "") + "). recapfast `auto` is `recapfast eval --attack auto` "
             "end to end from the PNG folder (a cascade with early stopping); the torchattacks loop runs its FGSM, "
             "APGD and Square on every patch at every eps on decoded patches; robust = patches correct clean and "
             "under all three, per eps.", "",
             "| model | px | patches | threads | recapfast auto s | torchattacks loop s | x | ART AutoAttack s | x | "
             "APGD alone: recapfast s | torchattacks s | x | robust per eps (recapfast / torchattacks) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in auto["rows"]:
        c = r["contenders"]
        get = lambda n: c.get(n, {}).get("cpu_s")  # noqa: E731
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        rob = f"{c['recapfast auto']['robust_per_eps']} / {c.get('torchattacks loop', {}).get('robust_per_eps', '–')}"
        lines.append(f"| {r['model']} | {r['size']} | {r['patches']} | {r['threads']} | {fmt(get('recapfast auto'))} | "
                     f"{fmt(get('torchattacks loop'))} | {fmt(r.get('auto_over_torchattacks_loop'))} | "
                     f"{fmt(get('ART AutoAttack'))} | {fmt(r.get('auto_over_art'))} | "
                     f"{fmt(get('recapfast APGD alone'))} | {fmt(get('torchattacks APGD alone'))} | "
                     f"{fmt(r.get('apgd_over_torchattacks_apgd'))} | {rob} |")
    if auto.get("missing"):
        lines += ["", "Missing: " + "; ".join(f"{k} ({v})" for k, v in auto["missing"].items()) + "."]
    return lines


def auto_targets(auto: dict) -> list[tuple[str, str, bool]]:
    out = []
    for r in auto["rows"]:
        if r["threads"] != 1:
            continue
        where = f"{r['model']}, {r['size']} px, 1 thread"
        if "apgd_over_torchattacks_apgd" in r:
            v = r["apgd_over_torchattacks_apgd"]
            out.append((f"APGD alone >= 3x torchattacks' APGD ({where})", f"{v:.2f}x", v >= 3.0))
        if "auto_over_torchattacks_loop" in r:
            v = r["auto_over_torchattacks_loop"]
            out.append((f"`eval --attack auto` >= 3x the torchattacks loop ({where})", f"{v:.2f}x", v >= 3.0))
    return out


def markdown(results: dict) -> str:
    m, w = results["meta"], results["workloads"]
    L = [f"# recapfast benchmark — {m['machine']} ({m['cores']} cores)", "",
         f"torch {m['torch']}, thread counts {m['torch_threads']} (the first is the reported one), GPU: "
         f"{m['gpu'] or 'none'}, {m['date']}, commit {m['git_commit']}, mode `{m['mode']}`, "
         f"{m.get('seconds_total', '?')} s in all.", "",
         f"**Contention:** 1-min load average {m['load_avg_1min_at_start']} at the start and "
         f"{m.get('load_avg_1min_at_end')} at the end on {m['cores']} cores (a shared machine). Contenders alternate "
         "within each repetition; statistics are medians; ratios compare CPU-time medians (`time.process_time`) of "
         "contenders of the same run; wall times are recorded beside them in the JSON.", "",
         f"Model (all contenders): `{results['model']['model']}` — {results['model']['source']}; "
         f"{results['model']['parameters']} parameters, widths {results['model']['widths']}.", "",
         "## Contenders", "", "| contender | version | op backend | status | LLCM |", "|---|---|---|---|---|"]
    for c in results["contenders"]:
        status = "ok" if c["status"] == "ok" else f"**missing** ({c['missing_reason']})"
        L.append(f"| {c['label']} | {c['version'] or '–'} | {c.get('backend', '–')} | {status} | {c['llcm']} |")
    if any(c["status"] != "ok" for c in results["contenders"]):
        L += ["", f"Install the missing peers with: `{results['peer_install']}`"]
    notes = [f"- {c['label']}: {n}" for c in results["contenders"] for n in c["notes"]]
    if notes:
        L += ["", *notes]
    tg = targets(results) + (auto_targets(w["auto"]) if w.get("auto") else [])
    if tg:
        L += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        L += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in tg]
    if w.get("auto"):
        L += ["", "## Strong attacks (auto)", "", *auto_lines(w["auto"])]
    ev = w.get("eval_sweep")
    if ev:
        L += ["", "## Eval sweep", "",
              f"Clean + FGSM and LLCM at eps {', '.join(f'{e:g}' for e in ev['eps'])} (11 predictions per image), "
              "quantized to uint8. Model-only: decoded patches in memory. End-to-end: recapfast runs `recapfast "
              "eval`'s path (loader + sweep + L-inf, L2, PSNR, SSIM); the others run recapfast's loader (decode + "
              f"crop, {ev['workers_end_to_end']} workers) and their attack. Images per CPU second; median of "
              f"{ev['reps']}.", ""]
        for run in ev["runs"]:
            L += [f"### {run['threads']} thread(s)", ""]
            L += eval_table(results, run["threads"])
            L += ["", "| px | contender | mode | CPU s | wall s | system s |", "|---:|---|---|---:|---:|---:|"]
            for entry in run["sizes"]:
                for mode in ("model-only", "end-to-end"):
                    for r in entry["modes"].get(mode, []):
                        L.append(f"| {entry['size']} | {r['contender']} | {mode} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | "
                                 f"{r.get('sys_s', float('nan')):.3f} |")
            for entry in run["sizes"]:
                if entry.get("eval_over_sweep"):
                    L.append(f"\n{entry['size']} px: end-to-end `recapfast eval` / model-only sweep (CPU): "
                             + ", ".join(f"{k} {v:.2f}x" for k, v in entry["eval_over_sweep"].items()))
            L += [""]
        first = ev["runs"][0]
        for entry in first["sizes"]:
            L += [f"### {entry['size']} px: {entry['images']} images, batch {entry['batch_size']} — accuracy (%)", "",
                  "| contender | clean | " + " | ".join(f"FGSM {e:g}" for e in ev["eps"]) + " | "
                  + " | ".join(f"LLCM {e:g}" for e in ev["eps"]) + " |",
                  "|---|---:|" + "---:|" * (2 * len(ev["eps"]))]
            for name, acc in entry.get("accuracy", {}).items():
                llcm = acc["llcm"] or [None] * len(ev["eps"])
                L.append(f"| {name} | {_pct(acc['clean'])} | " + " | ".join(_pct(v) for v in acc["fgsm"]) + " | "
                         + " | ".join(_pct(v) for v in llcm) + " |")
            for a in entry.get("agreement", []):
                f, ll = a["fgsm"], a["llcm"]
                text = (f"- {a['contender']} vs {entry['agreement_reference']}: FGSM "
                        + ("identical per image" if f and not f["image_mismatches"] else
                           f"{f['image_mismatches']} image-level differences, correct counts differ by "
                           f"{f['correct_count_diff_per_eps']}" if f else "n/a"))
                if ll is not None:
                    text += ("; LLCM identical per image" if not ll["image_mismatches"] else
                             f"; LLCM differs on {ll['image_mismatches']} image x eps, "
                             f"{ll['image_mismatches_on_clean_correct']} of them on clean-correct images "
                             f"({ll['clean_misclassified']} images are misclassified clean)")
                L.append(text)
            L.append("")
    sc = w.get("scaling")
    if sc:
        L += ["## Scaling with the number of eps", "",
              f"FGSM + LLCM, one batch of {sc['batch']} images at {sc['size']} px in memory, {sc['threads']} thread(s); "
              f"CPU seconds (median of {sc['reps']}).", "",
              "| contender | " + " | ".join(f"{n} eps" for n in sc["eps_counts"]) + " | CPU s per extra eps | vs loop |",
              "|---|" + "---:|" * (len(sc["eps_counts"]) + 2)]
        for name, secs in sc["cpu_seconds"].items():
            ratio = sc["marginal_ratio_vs_torchattacks"].get(name)
            L.append(f"| {name} | " + " | ".join(f"{s:.3f}" for s in secs) + f" | "
                     f"{sc['marginal_cpu_seconds_per_eps'][name]:.4f} | {_pct(ratio)}% |")
        L.append("")
    ts = w.get("train_step")
    if ts:
        L += _timed_section("Training step", f"Batch {ts['batch']}, {ts['size']} px, Adam, op backend {ts.get('backend')}",
                            ts, ["mode", "CPU ms/step", "wall ms/step", "vs plain (CPU)", "target"])
        for r in ts["rows"]:
            tgt = ts["targets"].get(r["mode"])
            L.append(f"| {r['mode']} | {r['cpu_ms_per_step']} | {r['wall_ms_per_step']} | {r['ratio_vs_plain']:.2f}x | "
                     f"{'<= %gx' % tgt if tgt else '–'} |")
        L.append("")
    rb = w.get("train_robustness")
    if rb:
        st = rb["start_accuracy"]
        L += [f"Robustness: the benchmark model (clean {_pct(st['clean_accuracy'])}%, FGSM eps 2 "
              f"{_pct(st['fgsm_eps2_accuracy'])}%) fine-tuned {rb['iters']} iterations (batch {rb['batch']}, lr "
              f"{rb['lr']:g}, {rb['train_images']} training images, same batches) per mode; accuracy on "
              f"{rb['eval_images']} held-out synthetic images.", "",
              "| mode | clean % | FGSM eps 2 % |", "|---|---:|---:|"]
        L += [f"| {r['mode']} | {_pct(r['clean_accuracy'])} | {_pct(r['fgsm_eps2_accuracy'])} |" for r in rb["rows"]]
        L.append("")
    sp = w.get("screen_probe")
    if sp:
        L += _timed_section("Screening with probes", f"{sp['images']} images of {sp['size']} px, {sp['tile']} px tiles",
                            sp, ["run", "CPU s", "wall s", "system s"])
        L += [f"| {name} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | {r['sys_s']:.3f} |" for name, r in sp["rows"].items()]
        L += ["", f"Probing costs {sp['probe_over_plain']:.2f}x the plain screen (CPU){_flip_note(sp)}.", ""]
    fl = w.get("floor")
    if fl:
        L += ["## Distance to the convolution floor", "", *_floor_lines(fl), ""]
    dp = w.get("data_pipeline")
    if dp:
        L += ["## Data pipeline (decode + patch only)", "", "| px | files | workers | img/s |", "|---:|---:|---:|---:|"]
        L += [f"| {r['size']} | {r['files']} | {r['workers']} | {r['images_per_s']} |" for r in dp["rows"]]
        L.append("")
    kn = w.get("kernels")
    if kn:
        L += ["## Kernels (C++ ext vs PyTorch reference)", "", "| op | px | batch | ext ms | torch ms | speedup |",
              "|---|---:|---:|---:|---:|---:|"]
        L += [f"| {r['op']} | {r['size']} | {r['batch']} | {r['ext_ms']:.2f} | {r['torch_ms']:.2f} | {r['speedup']:.2f}x |"
              for r in kn["rows"]]
    return "\n".join(L).rstrip() + "\n"


def _flip_note(sp: dict) -> str:
    """Where the probed files flipped: a file stops being attacked at its first flipping eps, so this sets the cost."""
    hist = sp.get("flip_eps_histogram")
    if not hist:
        return ""
    parts = ", ".join(f"{n} at eps {float(e):g}" if e != "None" else f"{n} never" for e, n in hist.items())
    return f"; the probed files flipped: {parts}"
