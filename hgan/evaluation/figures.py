"""Pictures a person looks at: the top-10 grid of HGAN Fig. 3, the word map of Fig. 4."""
from __future__ import annotations

import io
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_GREEN, _RED, _WHITE, _BLACK = (40, 170, 60), (210, 40, 40), (255, 255, 255), (0, 0, 0)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def top10_grid(queries: list[str], query_labels, ranked_images: list[list[bytes]],
               ranked_labels, thumb=(96, 48)) -> Image.Image:
    """Fig. 3: one row per query, its caption then its top-10 images, matches boxed green
    (the paper's red boxes), non-matches red."""
    th, tw = thumb
    text_w, pad = 220, 4
    rows = len(queries)
    columns = max(len(r) for r in ranked_images)
    canvas = Image.new("RGB", (text_w + columns * (tw + pad) + pad, rows * (th + pad) + pad),
                       _WHITE)
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for r, (query, label, images, labels) in enumerate(
            zip(queries, query_labels, ranked_images, ranked_labels)):
        y = pad + r * (th + pad)
        draw.multiline_text((pad, y), "\n".join(textwrap.wrap(query, 34)[:7]), fill=_BLACK,
                            font=font)
        for c, (encoded, lab) in enumerate(zip(images, labels)):
            x = text_w + pad + c * (tw + pad)
            thumb_img = Image.open(io.BytesIO(encoded)).convert("RGB").resize((tw, th))
            canvas.paste(thumb_img, (x, y))
            draw.rectangle([x, y, x + tw - 1, y + th - 1], outline=_GREEN if lab == label else _RED,
                           width=3)
    return canvas


def word_selection_map(words: list[str], weights: np.ndarray, cell=(18, 48)) -> Image.Image:
    """Fig. 4: for each image region (row), the words it selected and their Eq. 7 weights
    (column), darker = heavier; unselected words stay white."""
    weights = np.asarray(weights, np.float32)
    regions, n_words = weights.shape
    ch, cw = cell
    label_h, label_w = 70, 40
    canvas = Image.new("RGB", (label_w + n_words * cw, label_h + regions * ch), _WHITE)
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for j, word in enumerate(words[:n_words]):
        draw.text((label_w + j * cw + 2, 4 + (j % 3) * 20), word[:8], fill=_BLACK, font=font)
    top = max(float(weights.max()), 1e-6)
    for i in range(regions):
        draw.text((2, label_h + i * ch + 2), f"r{i}", fill=_BLACK, font=font)
        for j in range(n_words):
            level = int(255 * (1 - weights[i, j] / top))
            x, y = label_w + j * cw, label_h + i * ch
            draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(255, level, level),
                           outline=(220, 220, 220))
    return canvas
