"""hgan-demo-data: writes a small synthetic pedestrian data set in the CUHK-PEDES layout,
for demos and tests.

    hgan-demo-data --output_dir=DIR [--identities=300 --shots=4 --seed=0]
    hgan-prep --dataset=demo --data_dir=DIR --output_dir=OUT

Each identity is a drawn figure with its own clothing: upper garment (colour and type),
lower garment (colour; pants, shorts or skirt), shoe colour, optional hat or cap, optional
bag (and hair, skin). No two identities share all the attributes that captions name, but
many share some, so retrieving an identity from a caption needs more than one attribute.
Every shot of an identity moves, scales and flips the figure over another background, with
a little noise. Each 128x64 JPEG gets two captions, drawn from templates with synonyms and
varied word order.

``DIR/reid_raw.json`` has the fields of the real file (``split``, ``captions``,
``file_path``, ``processed_tokens``, ``id``); images are under ``DIR/imgs/``. Identities
are split 60/20/20 % into train/val/test. Everything is a function of ``--seed``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from hgan.cli import start

HEIGHT, WIDTH = 128, 64

COLOURS = {
    "black": (28, 28, 30), "white": (236, 236, 232), "red": (196, 32, 38),
    "blue": (38, 72, 186), "green": (40, 136, 62), "yellow": (232, 200, 44),
    "grey": (128, 128, 132), "pink": (236, 132, 170), "brown": (118, 74, 40),
    "purple": (108, 52, 140), "orange": (236, 128, 32),
}
SHOE_COLOURS = ("black", "white", "brown", "grey", "red", "blue")
HAIR_COLOURS = {"black": (20, 18, 18), "brown": (92, 58, 30), "blond": (214, 180, 100)}
SKIN_TONES = ((241, 200, 170), (222, 172, 130), (176, 122, 84), (120, 80, 56))
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "sweater", "coat")
LOWER_TYPES = ("pants", "shorts", "skirt")
HATS = (None, None, None, "cap", "hat")
BAGS = (None, None, "backpack", "shoulder bag", "handbag")

# Words a caption may use for an attribute value.
_SYNONYMS = {
    "man": ("man", "guy", "young man", "male pedestrian"),
    "woman": ("woman", "lady", "young woman", "female pedestrian"),
    "t-shirt": ("t-shirt", "tee shirt", "short-sleeved shirt"),
    "shirt": ("shirt", "long-sleeved shirt", "button-up shirt"),
    "jacket": ("jacket", "zip-up jacket"),
    "sweater": ("sweater", "jumper"),
    "coat": ("coat", "long coat"),
    "pants": ("pants", "trousers"),
    "shorts": ("shorts",),
    "skirt": ("skirt",),
    "cap": ("cap", "baseball cap"),
    "hat": ("hat", "brimmed hat"),
    "backpack": ("backpack",),
    "shoulder bag": ("shoulder bag", "bag on the shoulder"),
    "handbag": ("handbag", "purse"),
    "grey": ("grey", "gray"),
    "shoes": ("shoes", "sneakers"),
}


@dataclasses.dataclass(frozen=True)
class Person:
    """Everything that identifies one demo identity (the same in all of its shots)."""
    gender: str
    upper: tuple[str, str]  # (colour, type)
    lower: tuple[str, str]
    shoes: str
    hat: tuple[str, str] | None
    bag: tuple[str, str] | None
    hair: str
    long_hair: bool
    skin: int

    def described(self) -> tuple:
        """The attributes that every caption names; no two identities share all of them."""
        return (self.gender, self.upper, self.lower, self.shoes, self.hat, self.bag)


def generate(output_dir: str, identities: int = 300, shots: int = 4, seed: int = 0) -> str:
    """Writes the data set to ``output_dir``; returns the path of ``reid_raw.json``."""
    if identities < 3 or shots < 1:
        raise ValueError("need at least 3 identities (one per split) and 1 shot")
    people = sample_people(identities, seed)
    held_out = max(1, identities // 5)
    entries = []
    for pid, person in enumerate(people, 1):
        split = ("train" if pid <= identities - 2 * held_out
                 else "val" if pid <= identities - held_out else "test")
        for shot in range(shots):
            rng = random.Random(f"demo-{seed}-{pid}-{shot}")
            file_path = f"demo/{pid:04d}_{shot}.jpg"
            image_path = os.path.join(output_dir, "imgs", file_path)
            os.makedirs(os.path.dirname(image_path), exist_ok=True)
            draw_person(person, rng).save(image_path, "JPEG", quality=90)
            captions = two_captions(person, rng)
            entries.append({
                "split": split, "captions": captions, "file_path": file_path,
                "processed_tokens": [_tokens(c) for c in captions], "id": pid,
            })
    path = os.path.join(output_dir, "reid_raw.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    return path


def sample_people(count: int, seed: int) -> list[Person]:
    """``count`` people, each differing from all others in a described attribute."""
    people, seen = [], set()
    for pid in range(1, count + 1):
        rng = random.Random(f"demo-{seed}-{pid}")
        person = _sample_person(rng)
        while person.described() in seen:
            person = _sample_person(rng)
        seen.add(person.described())
        people.append(person)
    return people


def _sample_person(rng: random.Random) -> Person:
    gender = rng.choice(("man", "woman"))
    lower_types = LOWER_TYPES if gender == "woman" else LOWER_TYPES[:2]
    hat, bag = rng.choice(HATS), rng.choice(BAGS)
    return Person(
        gender=gender,
        upper=(rng.choice(list(COLOURS)), rng.choice(UPPER_TYPES)),
        lower=(rng.choice(list(COLOURS)), rng.choice(lower_types)),
        shoes=rng.choice(SHOE_COLOURS),
        hat=(rng.choice(list(COLOURS)), hat) if hat else None,
        bag=(rng.choice(list(COLOURS)), bag) if bag else None,
        hair=rng.choice(list(HAIR_COLOURS)),
        long_hair=gender == "woman" and rng.random() < 0.7,
        skin=rng.randrange(len(SKIN_TONES)),
    )


# ------------------------------------------------------------------------------ drawing

def draw_person(person: Person, rng: random.Random) -> Image.Image:
    """One shot: ``HEIGHT x WIDTH`` RGB, the figure jittered over a random background."""
    image = _background(rng)
    scale = rng.uniform(0.82, 1.0)  # the figure is about 112 * scale pixels tall
    pen = _Pen(ImageDraw.Draw(image), cx=WIDTH / 2 + rng.uniform(-5, 5),
               top=rng.uniform(3, HEIGHT - 112 * scale - 3), scale=scale)
    # Back to front: what is behind the body first.
    _draw_behind(pen, person)
    _draw_legs(pen, person, stride=rng.uniform(0, 5))
    _draw_torso(pen, person)
    _draw_head(pen, person)
    _draw_bag(pen, person)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _add_noise(image, rng)


@dataclasses.dataclass(frozen=True)
class _Pen:
    """Draws in figure units: x from the centre line, y down from the top of the head."""
    draw: ImageDraw.ImageDraw
    cx: float
    top: float
    scale: float

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.scale, self.top + y * self.scale)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, ...]:
        return (*self.pt(x0, y0), *self.pt(x1, y1))


def _draw_behind(pen: _Pen, person: Person) -> None:
    if person.bag and person.bag[1] == "backpack":
        pen.draw.rectangle(pen.box(-20, 19, 20, 47), fill=COLOURS[person.bag[0]])
    if person.long_hair:
        pen.draw.rectangle(pen.box(-8, 6, 8, 30), fill=HAIR_COLOURS[person.hair])


def _draw_legs(pen: _Pen, person: Person, stride: float) -> None:
    """Bare legs, then whatever the lower garment covers, then shoes; one foot steps ahead."""
    skin, colour = SKIN_TONES[person.skin], COLOURS[person.lower[0]]
    pen.draw.rectangle(pen.box(-10, 52, -1, 100 - stride), fill=skin)
    pen.draw.rectangle(pen.box(1, 52, 10, 100 + stride), fill=skin)
    if person.lower[1] == "skirt":
        pen.draw.polygon([pen.pt(-11, 50), pen.pt(11, 50), pen.pt(16, 80), pen.pt(-16, 80)],
                         fill=colour)
    else:
        hem = 100 if person.lower[1] == "pants" else 70
        pen.draw.rectangle(pen.box(-10, 50, -1, hem - stride), fill=colour)
        pen.draw.rectangle(pen.box(1, 50, 10, hem + stride), fill=colour)
    shoes = COLOURS[person.shoes]
    pen.draw.ellipse(pen.box(-12, 98 - stride, 0, 105 - stride), fill=shoes)
    pen.draw.ellipse(pen.box(0, 98 + stride, 12, 105 + stride), fill=shoes)


def _draw_torso(pen: _Pen, person: Person) -> None:
    """Torso and arms: a coat reaches the thighs, short sleeves show the forearms."""
    skin, (colour_name, kind) = SKIN_TONES[person.skin], person.upper
    colour = COLOURS[colour_name]
    waist = 60 if kind == "coat" else 53
    pen.draw.polygon([pen.pt(-12, 17), pen.pt(12, 17), pen.pt(10, waist), pen.pt(-10, waist)],
                     fill=colour)
    sleeve_end = 32 if kind == "t-shirt" else 52
    for x0, x1 in ((-17, -12), (12, 17)):
        pen.draw.rectangle(pen.box(x0, 18, x1, 54), fill=skin)
        pen.draw.rectangle(pen.box(x0, 18, x1, sleeve_end), fill=colour)
        pen.draw.ellipse(pen.box(x0, 52, x1, 58), fill=skin)
    if kind == "jacket":  # a zip
        pen.draw.line(pen.box(0, 18, 0, waist), fill=_shade(colour),
                      width=max(1, round(pen.scale)))
    elif kind == "shirt":  # a collar
        pen.draw.polygon([pen.pt(-4, 17), pen.pt(4, 17), pen.pt(0, 23)], fill=_shade(colour))


def _draw_head(pen: _Pen, person: Person) -> None:
    pen.draw.ellipse(pen.box(-6.5, 1, 6.5, 17), fill=SKIN_TONES[person.skin])
    pen.draw.chord(pen.box(-7, 0, 7, 12), 180, 360, fill=HAIR_COLOURS[person.hair])
    if not person.hat:
        return
    colour = COLOURS[person.hat[0]]
    if person.hat[1] == "cap":
        pen.draw.chord(pen.box(-7, -1, 7, 10), 180, 360, fill=colour)
        pen.draw.rectangle(pen.box(0, 4, 11, 6), fill=colour)  # the peak
    else:
        pen.draw.rectangle(pen.box(-11, 3, 11, 5), fill=colour)  # the brim
        pen.draw.rectangle(pen.box(-6, -3, 6, 4), fill=colour)


def _draw_bag(pen: _Pen, person: Person) -> None:
    """The front part of the bag (a backpack's straps; its pack is drawn behind the body)."""
    if not person.bag:
        return
    colour, kind = COLOURS[person.bag[0]], person.bag[1]
    if kind == "backpack":
        for x in (-7, 7):
            pen.draw.line(pen.box(x, 17, x * 1.2, 42), fill=colour, width=2)
    elif kind == "shoulder bag":
        pen.draw.line(pen.box(-10, 18, 10, 46), fill=_shade(colour), width=2)
        pen.draw.rectangle(pen.box(8, 42, 18, 52), fill=colour)
    else:  # a handbag, in one hand
        pen.draw.rectangle(pen.box(-21, 54, -13, 63), fill=colour)


def _background(rng: random.Random) -> Image.Image:
    """A muted wall, a ground strip and a few blocks (doors, windows, signs)."""
    def muted():
        return tuple(rng.randrange(60, 200) for _ in range(3))

    image = Image.new("RGB", (WIDTH, HEIGHT), muted())
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(1, 4)):
        x, y = rng.randrange(WIDTH), rng.randrange(HEIGHT // 2)
        draw.rectangle((x, y, x + rng.randrange(8, 30), y + rng.randrange(8, 40)), fill=muted())
    draw.rectangle((0, rng.randrange(90, 110), WIDTH, HEIGHT), fill=muted())
    return image


def _shade(colour: tuple[int, int, int]) -> tuple[int, ...]:
    """A visibly different tone of ``colour`` for seams and straps."""
    return tuple(c // 2 if sum(colour) > 200 else min(255, c + 80) for c in colour)


def _add_noise(image: Image.Image, rng: random.Random) -> Image.Image:
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0, 5, (HEIGHT, WIDTH, 3))
    brightness = rng.uniform(0.85, 1.15)
    pixels = np.asarray(image, np.float32) * brightness + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- captions

def two_captions(person: Person, rng: random.Random) -> list[str]:
    """Two different captions of one image."""
    first = caption(person, rng)
    second = caption(person, rng)
    while second == first:
        second = caption(person, rng)
    return [first, second]


def caption(person: Person, rng: random.Random) -> str:
    """One natural-sounding description, e.g. "A woman wearing a red jacket and black pants,
    carrying a blue shoulder bag." Mentions every garment; hair only sometimes."""
    def word(value):
        return rng.choice(_SYNONYMS.get(value, (value,)))

    def item(colour, kind):
        words = f"{word(colour)} {word(kind)}"
        if kind in ("pants", "shorts", "shoes"):
            return words
        return f"an {words}" if words[0] in "aeiou" else f"a {words}"

    pronoun = "he" if person.gender == "man" else "she"
    clothes = [item(*person.upper), item(*person.lower), item(person.shoes, "shoes")]
    if person.hat:
        clothes.append(item(*person.hat))
    # The upper garment is usually named first, as annotators do; the rest in any order.
    if rng.random() < 0.8:
        rest = clothes[1:]
        rng.shuffle(rest)
        clothes = clothes[:1] + rest
    else:
        rng.shuffle(clothes)
    split_at = rng.randint(2, len(clothes))
    subject = f"{rng.choice(('A', 'The', 'This'))} {word(person.gender)}"
    sentences = [f"{subject} {rng.choice(('wearing', 'in', 'dressed in', 'who is wearing'))} "
                 f"{_and_list(clothes[:split_at])}"]
    if split_at < len(clothes):
        verb = rng.choice(("is also wearing", "also has on", "wears"))
        sentences.append(f"{pronoun} {verb} {_and_list(clothes[split_at:])}")
    if person.bag:
        bag = item(*person.bag)
        if rng.random() < 0.5:
            # One holds a handbag; a backpack or shoulder bag is carried.
            verbs = ("carrying", "with") + (("holding",) if person.bag[1] == "handbag" else ())
            sentences[0] += f", {rng.choice(verbs)} {bag}"
        else:
            sentences.append(f"{pronoun} {rng.choice(('is carrying', 'carries', 'has'))} {bag}")
    if rng.random() < 0.4:
        length = "long" if person.long_hair else "short"
        sentences.append(f"{pronoun} has {length} {person.hair} hair")
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _tokens(text: str) -> list[str]:
    """``processed_tokens`` as in reid_raw.json: lower-case words without punctuation."""
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower())


# ----------------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    path = generate(FLAGS.output_dir, FLAGS.identities, FLAGS.shots, FLAGS.seed)
    print(f"wrote {path} ({FLAGS.identities} identities x {FLAGS.shots} shots)")


def define_flags():
    # Defined only when run, so importing the generator claims no flag names.
    flags.DEFINE_string("output_dir", None, "Folder for reid_raw.json and imgs/.", required=True)
    flags.DEFINE_integer("identities", 300, "Identities in all (60/20/20 % train/val/test).",
                         lower_bound=3)
    flags.DEFINE_integer("shots", 4, "Images per identity.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Everything generated is a function of it.")


def run():
    """hgan-demo-data."""
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
