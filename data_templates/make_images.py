"""Regenerates the small PNGs the data templates reference (run from anywhere).

112x112 coloured shapes plus four frames of a dot moving right (a video given as
frames). Paletted PNGs keep the whole folder to a few kilobytes.
"""

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 112
OUT = Path(__file__).resolve().parent / "images"


def canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    return img, ImageDraw.Draw(img)


def save(img: Image.Image, name: str) -> None:
    path = OUT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(path, optimize=True)


def main() -> None:
    img, d = canvas()
    d.rectangle((28, 28, 84, 84), fill="red")
    save(img, "red_square.png")
    img, d = canvas()
    d.ellipse((26, 26, 86, 86), fill="blue")
    save(img, "blue_circle.png")
    img, d = canvas()
    d.polygon([(56, 20), (92, 88), (20, 88)], fill="green")
    save(img, "green_triangle.png")
    img, d = canvas()
    d.rectangle((12, 40, 44, 72), fill="red")
    d.ellipse((64, 36, 104, 76), fill="blue")
    save(img, "square_and_circle.png")
    for i in range(4):
        img, d = canvas()
        x = 16 + 24 * i
        d.ellipse((x, 46, x + 20, 66), fill="orange")
        save(img, f"frames/dot_{i}.png")


if __name__ == "__main__":
    main()
