"""One self-contained HTML report (no network: thumbnails inline as base64, inline CSS and JS) for `screen --html`
and `eval --html`.

Screen: one sortable row per file (thumbnail, tile heatmap, decision, p(recaptured), flip_eps, fragile; error
records as rows with their code), the colour scale and legend of the heatmaps.  Eval: the report's tables and
checks (accuracy per attack and eps, worst case, masking checks, detection metrics), a ROC curve of the clean
scores, and example adversarial patches with their perturbation magnified.

Heatmap colours: a diverging scale centred on the decision threshold, blue (p = 0, original) through white to
red (p = 1, recaptured), at 45% opacity over the photo so the photo stays visible; white lines mark the tile
grid; the strip right of / below the last full tile, which is not screened, is hatched grey.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

THUMB = 200                 # longest side of a thumbnail, pixels
MAX_THUMBS = 1000           # files beyond this get a row without pictures (the file stays small)
OPACITY = 0.45
# diverging scale: (position, RGB); positions are re-mapped so the middle (white) sits at the threshold
STOPS = ((0.0, (33, 102, 172)), (0.5, (247, 247, 247)), (1.0, (178, 24, 43)))


def colour(p: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """RGB float [..., 3] of probabilities ``p`` on the diverging scale centred on ``threshold``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    t = min(max(threshold, 1e-6), 1 - 1e-6)
    u = np.where(p < t, 0.5 * p / t, 0.5 + 0.5 * (p - t) / (1 - t))
    (_, c0), (_, c1), (_, c2) = STOPS
    c0, c1, c2 = (np.array(c, dtype=np.float64) for c in (c0, c1, c2))
    lo = c0 + (c1 - c0) * (2 * u[..., None])
    hi = c1 + (c2 - c1) * (2 * u[..., None] - 1)
    return np.where(u[..., None] < 0.5, lo, hi)


def gradient_css(threshold: float = 0.5) -> str:
    stops = ", ".join(f"rgb{tuple(int(v) for v in colour(np.array(q), threshold))} {100 * q:.0f}%"
                      for q in (0.0, threshold / 2, threshold, (1 + threshold) / 2, 1.0))
    return f"linear-gradient(to right, {stops})"


def heatmap_array(img: np.ndarray, tile_map, size: int, threshold: float = 0.5) -> np.ndarray:
    """uint8 [H, W, 3]: the photo, each tile tinted by its p, tile grid lines, the unscreened strip hatched."""
    x = img.astype(np.float64)
    grid = np.asarray(tile_map, dtype=np.float64)
    rows, cols = grid.shape
    h, w = rows * size, cols * size
    tint = np.repeat(np.repeat(colour(grid, threshold), size, axis=0), size, axis=1)
    out = x.copy()
    out[:h, :w] = (1 - OPACITY) * x[:h, :w] + OPACITY * tint
    line = max(1, size // 32)
    for r in range(rows + 1):                  # grid lines inside the screened area (the last one on its edge)
        y = min(r * size, h - line)
        out[y:y + line, :w] = 255.0
    for c in range(cols + 1):
        x0 = min(c * size, w - line)
        out[:h, x0:x0 + line] = 255.0
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    hatch = ((yy + xx) // max(2, size // 8)) % 2 == 0
    strip = (yy >= h) | (xx >= w)
    out[strip] = 0.35 * out[strip] + 0.65 * np.where(hatch[strip, None], 150.0, 90.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heatmap_figure(img: np.ndarray, tile_map, size: int, threshold: float = 0.5, title: str = "") -> np.ndarray:
    """uint8 [H', W', 3]: :func:`heatmap_array` above a legend panel (title, colour bar 0..1 with the threshold,
    what the hatching means), so a heatmap PNG reads on its own, with the same scale as the HTML report."""
    from PIL import Image, ImageDraw

    heat = heatmap_array(img, tile_map, size, threshold)
    width = max(heat.shape[1], 420)
    panel = 64
    canvas = Image.new("RGB", (width, heat.shape[0] + panel), (255, 255, 255))
    canvas.paste(Image.fromarray(heat), (0, 0))
    draw = ImageDraw.Draw(canvas)
    top = heat.shape[0] + 4
    draw.text((4, top), (title + "  " if title else "") + f"p(recaptured) per {size} px tile", fill=(0, 0, 0))
    bar_w = 200
    ramp = colour(np.linspace(0.0, 1.0, bar_w), threshold).astype(np.uint8)
    canvas.paste(Image.fromarray(np.repeat(ramp[None], 12, axis=0)), (4, top + 16))
    draw.rectangle((3, top + 15, 4 + bar_w, top + 28), outline=(120, 120, 120))
    for value, anchor in ((0.0, "0 original"), (threshold, f"{threshold:g}"), (1.0, "1 recaptured")):
        x = 4 + round(value * (bar_w - 1))
        draw.line((x, top + 28, x, top + 32), fill=(0, 0, 0))
        draw.text((min(max(0, x - 3), width - 70), top + 33), anchor, fill=(0, 0, 0))
    hx = bar_w + 20
    for k in range(0, 24, 4):                                    # a hatched swatch, as on the image
        draw.rectangle((hx + k, top + 16, hx + k + 1, top + 27), fill=(150, 150, 150))
        draw.rectangle((hx + k + 2, top + 16, hx + k + 3, top + 27), fill=(90, 90, 90))
    draw.text((hx + 28, top + 17), "not screened", fill=(0, 0, 0))
    return np.asarray(canvas)


def data_uri(img: np.ndarray, longest: int = THUMB, fmt: str = "JPEG") -> str:
    from PIL import Image

    pic = Image.fromarray(img)
    scale = longest / max(pic.size)
    if scale < 1:
        pic = pic.resize((max(1, round(pic.width * scale)), max(1, round(pic.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    pic.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:middle}
th[data-key]{cursor:pointer;background:#eef} th[data-key]:hover{background:#dde}
td.num{text-align:right;font-variant-numeric:tabular-nums} tr.error td{background:#fee}
tr.fragile td.fragile{color:#b2182b;font-weight:bold}
.legend{display:flex;gap:1.5em;align-items:center;flex-wrap:wrap;margin:.8em 0}
.scale{width:260px;height:14px;border:1px solid #888} .ticks{display:flex;justify-content:space-between;width:262px;font-size:12px}
.hatch{display:inline-block;width:28px;height:14px;border:1px solid #888;
 background:repeating-linear-gradient(45deg,#969696 0 4px,#5a5a5a 4px 8px)}
img{display:block} .note{color:#555}
"""

SORT_JS = """
(function(){
  window.addEventListener('error', function(){ document.body.setAttribute('data-js-error', '1'); });
  document.querySelectorAll('table.sortable').forEach(function(table){
    var body = table.tBodies[0];
    table.querySelectorAll('th[data-key]').forEach(function(th){
      th.addEventListener('click', function(){
        var key = th.getAttribute('data-key'), num = th.getAttribute('data-type') === 'num';
        var dir = th.getAttribute('data-dir') === 'asc' ? -1 : 1;
        th.setAttribute('data-dir', dir === 1 ? 'asc' : 'desc');
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = a.getAttribute('data-' + key), y = b.getAttribute('data-' + key);
          if (num) { x = x === '' ? Infinity : parseFloat(x); y = y === '' ? Infinity : parseFloat(y);
                     return dir * ((x > y) - (x < y)); }
          return dir * x.localeCompare(y);
        });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });
  document.body.setAttribute('data-report-ready', String(document.querySelectorAll('tr.row').length));
})();
"""


def _page(title: str, body: list[str]) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{SORT_JS}</script>\n</body></html>\n")


def legend(threshold: float, with_strip: bool = True) -> str:
    parts = [f"<div class=\"legend\"><div><div class=\"scale\" style=\"background:{gradient_css(threshold)}\"></div>"
             f"<div class=\"ticks\"><span>0 original</span><span>{threshold:g} threshold</span>"
             "<span>1 recaptured</span></div><div class=\"note\">tile colour = p(recaptured) of that tile</div></div>"]
    if with_strip:
        parts.append("<div><span class=\"hatch\"></span> not screened (the strip narrower than one tile)</div>")
    return "".join(parts) + "</div>"


def _tile_map(rec: dict, out: Path):
    if rec.get("tile_map") is not None:
        return rec["tile_map"]
    if rec.get("tile_map_file"):
        return json.loads((out.parent / rec["tile_map_file"]).read_text())["tile_map"]
    return None


def _pictures(rec: dict, out: Path, size: int, threshold: float) -> tuple[str, str]:
    import os

    from recapfast.data.folder import DecodeError, decode

    raw = bytes.fromhex(rec["path_hex"]) if rec.get("path_hex") else rec["path"].encode("utf-8")
    try:
        img, _ = decode(os.fsdecode(raw))
        grid = _tile_map(rec, out)
    except (DecodeError, OSError, ValueError):
        return "", ""
    thumb = f"<img alt=\"photo\" src=\"{data_uri(img)}\">"
    heat = f"<img alt=\"tile map\" src=\"{data_uri(heatmap_array(img, grid, size, threshold))}\">" if grid else ""
    return thumb, heat


def screen_html(records, out: Path, summary: dict, size: int, threshold: float, fragile_eps: float,
                title: str) -> str:
    """The screen report of ``records`` (the output's records, in order; ``out`` the records file)."""
    rows = []
    for i, rec in enumerate(records):
        path = html.escape(rec["path"])
        if rec.get("error") is not None:
            rows.append(f"<tr class=\"row error\" data-path=\"{path}\" data-decision=\"error\" data-p=\"\" "
                        f"data-flip=\"\"><td>{path}</td><td></td><td></td><td>error: {html.escape(rec['error'])}"
                        f"</td><td class=\"num\"></td><td class=\"num\"></td><td>{html.escape(rec.get('reason', ''))}"
                        "</td></tr>")
            continue
        thumb, heat = _pictures(rec, out, size, threshold) if i < MAX_THUMBS else ("", "")
        flip = rec.get("flip_eps")
        fragile = rec.get("fragile")
        fragile_text = "n/a" if fragile is None else ("YES" if fragile else "no")
        cls = "row fragile" if fragile else "row"
        rows.append(f"<tr class=\"{cls}\" data-path=\"{path}\" data-decision=\"{rec['decision']}\" "
                    f"data-p=\"{rec['p_recaptured']}\" data-flip=\"{'' if flip is None else flip}\">"
                    f"<td>{path}</td><td>{thumb}</td><td>{heat}</td><td>{rec['decision']}</td>"
                    f"<td class=\"num\">{rec['p_recaptured']:.3f}</td>"
                    f"<td class=\"num\">{'none' if flip is None else f'{flip:g}'}</td>"
                    f"<td class=\"fragile\">{fragile_text}</td></tr>")
    dec = summary.get("decisions") or {}
    head = (f"<p>{summary.get('records', len(rows))} file(s): {summary.get('screened', 0)} screened, "
            f"{summary.get('errors', 0)} error(s); {dec.get('recaptured', 0)} recaptured, "
            f"{dec.get('original', 0)} original"
            + ("" if summary.get("fragile") is None else f"; {summary['fragile']} fragile") + ".</p>"
            f"<p class=\"note\"><b>fragile</b>: a change of at most {fragile_eps:g} grey level(s) per pixel flips "
            "the decision, so the verdict should not be relied on. <b>flip_eps</b>: the smallest probed change "
            "(grey levels, FGSM or LLCM) that flips it; none: no probe flipped it. Click a column to sort.</p>")
    table = ("<table class=\"sortable\" id=\"files\"><thead><tr><th data-key=\"path\">path</th><th>photo</th>"
             f"<th>tile map ({size} px tiles)</th><th data-key=\"decision\">decision</th>"
             "<th data-key=\"p\" data-type=\"num\">p(recaptured)</th><th data-key=\"flip\" data-type=\"num\">"
             "flip_eps</th><th>fragile</th></tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")
    return _page(title, [f"<h1>{html.escape(title)}</h1>", head, legend(threshold), table])


__all__ = ["colour", "data_uri", "gradient_css", "heatmap_array", "heatmap_figure", "legend", "screen_html"]
