"""Real output files: small PNGs, SVGs, AVIFs, HEICs, short MP4s (or GIFs) and text, drawn
from a run's inputs.

Each file is a pure function of (technique, inputs, output id): its colour comes from a
hash of them, and the technique's name, the output id and the input values are written
on it, so a person looking at the demo's results sees which row produced which file, and
a test can check that a download is byte-identical to what was served.

Video: H.264 in MP4 through PyAV (``av`` on PyPI bundles FFmpeg with libx264 in its
wheels), 12 frames at 12 fps, long side 128 px, in a few milliseconds.  If PyAV is not
importable the emulator makes an animated GIF instead and says so honestly
(``image/gif``, ``.gif``).

Image formats (a slot's ``format``): PNG by default; ``svg`` is drawn as SVG text;
``avif`` is Pillow's AVIF (Pillow 11.2 or later, else PNG, said honestly as for video);
``heic`` is that AVIF file with its ``ftyp`` brands saying ``heic``: Pillow writes no
HEVC, so the picture inside is AV1-coded, which a file sniffer accepts as HEIC and a
strict HEVC decoder would not.  With ``media_quirks`` an SVG starts with an XML prolog
and AVIF and HEIC are served as ``application/octet-stream`` (``quirky_type``), as
FLORA's storage may do.

``render_fetched`` makes the stand-in for a file the emulator pretends to fetch from a
``source`` URL (it reaches no network): a picture of the URL, in the type asked for
where it can (PNG, JPEG, WebP, GIF, PDF, a video, or a silent WAV for audio).
"""

from __future__ import annotations

import colorsys
import hashlib
import importlib.util
import io
import json
import re
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw, ImageFont, features

from flora_batch.types import RunInput

from .catalog import SlotDef, TechniqueDef

#: PyAV is optional (imported only when a video is drawn): without it videos become GIFs.
HAVE_AV = importlib.util.find_spec("av") is not None
#: What ``flora-batch emulator`` says at start when it cannot make MP4s.
NO_AV_NOTE = (
    "Videos: animated GIFs (image/gif), not MP4: PyAV is not installed "
    "(pip install 'flora-batch[video]')"
)

IMAGE_SIDE = 256
VIDEO_SIDE = 128
VIDEO_FRAMES = 12
VIDEO_FPS = 12

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

XML_PROLOG = b'<?xml version="1.0" encoding="UTF-8"?>\n'
OCTET_STREAM = "application/octet-stream"


def _have_avif() -> bool:
    try:
        return bool(features.check_module("avif"))
    except ValueError:  # Pillow before 11.2 has no AVIF plugin at all
        return False


#: Whether Pillow can write AVIF here: without it AVIF and HEIC outputs become PNGs.
HAVE_AVIF = _have_avif()
_PNG = (".png", "image/png")
#: ``(extension, content type)`` of each image output format (a slot's ``format``).
IMAGE_FORMATS: dict[str | None, tuple[str, str]] = {
    None: _PNG,
    "svg": (".svg", "image/svg+xml"),
    "avif": (".avif", "image/avif") if HAVE_AVIF else _PNG,
    "heic": (".heic", "image/heic") if HAVE_AVIF else _PNG,
}


@dataclass(frozen=True)
class OutputSpec:
    """One output a completed run will have: id, wire type, file name suffix, content type."""

    output_id: str
    type: str
    slot: SlotDef
    index: int  # 1-based position among the outputs of its slot
    ext: str
    content_type: str


def video_format() -> tuple[str, str]:
    """``(extension, content type)`` of the videos this machine can make."""
    return (".mp4", "video/mp4") if HAVE_AV else (".gif", "image/gif")


def _file_format(slot: SlotDef) -> tuple[str, str]:
    if slot.type == "imageUrl":
        return IMAGE_FORMATS[slot.format]
    if slot.type == "videoUrl":
        return video_format()
    return ".txt", "text/plain; charset=utf-8"


def quirky_type(spec: OutputSpec) -> str:
    """The Content-Type an output is served with under ``media_quirks``."""
    return OCTET_STREAM if spec.ext in (".avif", ".heic") else spec.content_type


def plan_outputs(technique: TechniqueDef) -> tuple[OutputSpec, ...]:
    """The outputs of a completed run: ``output_1``…``output_N`` across the output slots."""
    specs: list[OutputSpec] = []
    for slot in technique.outputs:
        for index in range(1, slot.count + 1):
            ext, content_type = _file_format(slot)
            oid = f"output_{len(specs) + 1}"
            specs.append(OutputSpec(oid, slot.type, slot, index, ext, content_type))
    return tuple(specs)


def find_output(technique: TechniqueDef, output_id: str) -> OutputSpec | None:
    """The planned output with this id, if the technique has one."""
    return next((o for o in plan_outputs(technique) if o.output_id == output_id), None)


def digest(technique: TechniqueDef, inputs: Sequence[RunInput], output_id: str) -> bytes:
    """The hash every pixel and word of an output is derived from."""
    data = [technique.slug, output_id, sorted((i.id, i.type, i.value) for i in inputs)]
    return hashlib.sha256(json.dumps(data).encode()).digest()


def _colour(seed: bytes, shift: float = 0.0) -> tuple[int, int, int]:
    hue = (seed[0] / 255 + shift) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.45 + seed[1] / 255 * 0.4, 0.55 + seed[2] / 680)
    return int(red * 255), int(green * 255), int(blue * 255)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _size(spec: OutputSpec, inputs: Sequence[RunInput], side: int) -> tuple[int, int]:
    """Pixel size from the slot's aspect ratio (or the input it names), long side ``side``."""
    ratio = spec.slot.specified_aspect_ratio
    if spec.slot.aspect_from:
        ratio = next((i.value for i in inputs if i.id == spec.slot.aspect_from), ratio)
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", ratio or "")
    if not match or not int(match[1]) or not int(match[2]):
        return side, side
    w, h = int(match[1]), int(match[2])
    scale = side / max(w, h)
    return max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)


@cache
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _shown(value: str) -> str:
    """An input value as written on a picture: URLs shortened to their file name."""
    if value.startswith(("http://", "https://")):
        tail = value.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        return f"…/{tail}"
    return " ".join(value.split())


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels; a binary search keeps it fast."""
    if draw.textlength(text, font=font) <= width:
        return text
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if draw.textlength(text[:mid] + "…", font=font) <= width:
            low = mid
        else:
            high = mid - 1
    return text[:low] + "…"


def caption(technique: TechniqueDef, spec: OutputSpec, inputs: Sequence[RunInput]) -> list[str]:
    """The lines written on an output: technique, output, then each input value."""
    count = spec.slot.count
    which = f"{spec.slot.name} {spec.index}/{count}" if count > 1 else spec.slot.name
    lines = [technique.name, f"{spec.output_id} · {which}"]
    return lines + [f"{i.id}: {_shown(i.value)}" for i in inputs]


def _draw_frame(
    size: tuple[int, int], seed: bytes, lines: list[str], phase: float = 0.0
) -> Image.Image:
    """One picture: a hashed background, two hashed shapes, and the caption on a band."""
    width, height = size
    image = Image.new("RGB", size, _colour(seed, phase * 0.15))
    draw = ImageDraw.Draw(image)
    radius = width // 5
    cx = int((seed[3] / 255 * 0.6 + 0.2 + phase * 0.5) % 1.0 * width)
    cy = int((seed[4] / 255 * 0.5 + 0.25) * height)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=_colour(seed, 0.33))
    x0 = int(seed[5] / 255 * width * 0.6)
    draw.rectangle((x0, height * 2 // 3, x0 + width // 3, height), fill=_colour(seed, 0.66))
    font = _font(max(9, width // 18))
    line_height = max(11, width // 15)
    band = min(height, 6 + line_height * len(lines))
    draw.rectangle((0, 0, width, band), fill=(20, 20, 24))
    for n, line in enumerate(lines):
        draw.text(
            (5, 3 + n * line_height), _fit(draw, line, font, width - 10), font=font, fill="white"
        )
    return image


def render_png(technique: TechniqueDef, spec: OutputSpec, inputs: Sequence[RunInput]) -> bytes:
    """A PNG for an image output."""
    return _render_raster(technique, spec, inputs, "PNG")


def _render_raster(
    technique: TechniqueDef, spec: OutputSpec, inputs: Sequence[RunInput], kind: str
) -> bytes:
    seed = digest(technique, inputs, spec.output_id)
    frame = _draw_frame(_size(spec, inputs, IMAGE_SIDE), seed, caption(technique, spec, inputs))
    out = io.BytesIO()
    if kind == "PNG":
        frame.save(out, format="PNG", optimize=False)
    else:
        frame.save(out, format=kind, speed=10)
    return out.getvalue()


def render_image(
    technique: TechniqueDef, spec: OutputSpec, inputs: Sequence[RunInput], *, quirks: bool = False
) -> bytes:
    """An image output in its slot's format (``IMAGE_FORMATS``); ``quirks`` adds the SVG
    prolog."""
    if spec.ext == ".svg":
        svg = render_svg(technique, spec, inputs)
        return XML_PROLOG + svg if quirks else svg
    if spec.ext == ".avif":
        return _render_raster(technique, spec, inputs, "AVIF")
    if spec.ext == ".heic":
        return as_heic(_render_raster(technique, spec, inputs, "AVIF"))
    return render_png(technique, spec, inputs)


def render_svg(technique: TechniqueDef, spec: OutputSpec, inputs: Sequence[RunInput]) -> bytes:
    """An SVG for an image output: the PNG's picture (hashed colours, shapes, caption) as
    vector shapes and text."""
    seed = digest(technique, inputs, spec.output_id)
    width, height = _size(spec, inputs, IMAGE_SIDE)
    radius, line = width // 5, max(11, width // 15)
    cx = int((seed[3] / 255 * 0.6 + 0.2) * width)
    cy = int((seed[4] / 255 * 0.5 + 0.25) * height)
    x0 = int(seed[5] / 255 * width * 0.6)
    lines = caption(technique, spec, inputs)
    texts = "".join(
        f'<text x="5" y="{3 + (n + 1) * line - 3}">{escape(text)}</text>'
        for n, text in enumerate(lines)
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="{_hex(_colour(seed))}"/>',
        f'<circle cx="{cx}" cy="{cy}" r="{radius}" fill="{_hex(_colour(seed, 0.33))}"/>',
        f'<rect x="{x0}" y="{height * 2 // 3}" width="{width // 3}" height="{height}" '
        f'fill="{_hex(_colour(seed, 0.66))}"/>',
        f'<rect width="{width}" height="{min(height, 6 + line * len(lines))}" fill="#141418"/>',
        f'<g fill="white" font-family="sans-serif" font-size="{max(9, width // 18)}">',
        texts,
        "</g></svg>\n",
    ]
    return "".join(parts).encode()


def as_heic(avif: bytes) -> bytes:
    """An AVIF file whose ``ftyp`` box says ``heic`` wherever it said ``avif``."""
    size = int.from_bytes(avif[:4], "big")
    if avif[4:8] != b"ftyp" or not 16 <= size <= len(avif):
        raise ValueError("not an ISO-BMFF file with a leading ftyp box")
    brands = [avif[n : n + 4] for n in range(8, size, 4)]
    box = avif[:8] + b"".join(b"heic" if b == b"avif" else b for b in brands)
    return box + avif[size:]


def _video_frames(
    technique: TechniqueDef, spec: OutputSpec, inputs: Sequence[RunInput]
) -> list[Image.Image]:
    seed = digest(technique, inputs, spec.output_id)
    size = _size(spec, inputs, VIDEO_SIDE)
    lines = [*caption(technique, spec, inputs)[:3]]
    return [
        _draw_frame(size, seed, [*lines, f"frame {n + 1}/{VIDEO_FRAMES}"], n / VIDEO_FRAMES)
        for n in range(VIDEO_FRAMES)
    ]


def _encode_mp4(frames: list[Image.Image]) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=VIDEO_FPS)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):  # type: ignore[no-untyped-call]
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def _encode_gif(frames: list[Image.Image]) -> bytes:
    out = io.BytesIO()
    first, *rest = frames
    first.save(
        out, format="GIF", save_all=True, append_images=rest, duration=1000 // VIDEO_FPS, loop=0
    )
    return out.getvalue()


def render_video(technique: TechniqueDef, spec: OutputSpec, inputs: Sequence[RunInput]) -> bytes:
    """A short video for a video output: MP4 with PyAV, else an animated GIF."""
    frames = _video_frames(technique, spec, inputs)
    return _encode_mp4(frames) if HAVE_AV else _encode_gif(frames)


def render_text(technique: TechniqueDef, spec: OutputSpec, inputs: Sequence[RunInput]) -> str:
    """The content of a ``text`` output (carried in the output's ``url`` field)."""
    seed = digest(technique, inputs, spec.output_id)
    colours = [_hex(_colour(seed, k / 5)) for k in range(5)]
    about = "; ".join(f"{i.id}: {_shown(i.value)}" for i in inputs)
    if spec.slot.id == "palette":
        return ", ".join(colours)
    if spec.slot.id == "legend":
        parts = ("sky", "ground", "subject", "background", "accent")
        return "; ".join(f"{c} {p}" for c, p in zip(colours, parts, strict=True))
    return f"{spec.slot.name} by {technique.name} for {about}."


def render_bytes(
    technique: TechniqueDef, spec: OutputSpec, inputs: Sequence[RunInput], *, quirks: bool = False
) -> bytes:
    """The bytes served for any output (text outputs are served as UTF-8 too)."""
    if spec.type == "imageUrl":
        return render_image(technique, spec, inputs, quirks=quirks)
    if spec.type == "videoUrl":
        return render_video(technique, spec, inputs)
    return render_text(technique, spec, inputs).encode()


_PIL_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "application/pdf": "PDF",
}


def render_fetched(url: str, content_type: str) -> tuple[bytes, str]:
    """Bytes standing in for what ``url`` holds, and their real type.

    ``content_type`` is the type wanted (declared, or guessed from the URL); images
    Pillow cannot write (AVIF, HEIC) come out as PNG, any video as ``video_format()``.
    """
    seed = hashlib.sha256(url.encode()).digest()
    lines = ["Fetched by the FLORA emulator", urlsplit(url).hostname or "?", _shown(url)]
    if content_type.startswith("video/"):
        frames = [
            _draw_frame((VIDEO_SIDE, VIDEO_SIDE), seed, lines, n / VIDEO_FRAMES)
            for n in range(VIDEO_FRAMES)
        ]
        return (_encode_mp4(frames) if HAVE_AV else _encode_gif(frames)), video_format()[1]
    if content_type.startswith("audio/"):
        return _silent_wav(), "audio/wav"
    frame = _draw_frame((IMAGE_SIDE, IMAGE_SIDE * 3 // 4), seed, lines)
    kind = content_type if content_type in _PIL_FORMATS else "image/png"
    out = io.BytesIO()
    frame.save(out, format=_PIL_FORMATS[kind])
    return out.getvalue(), kind


def _silent_wav(seconds: float = 0.25, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(1)
        sound.setframerate(rate)
        sound.writeframes(b"\x80" * int(seconds * rate))
    return out.getvalue()
