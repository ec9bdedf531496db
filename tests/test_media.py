"""Media stage (data/media.py) and raw-record streaming (data/files.py): every check, real files."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from qvq_tune.data.files import input_files, iter_raw
from qvq_tune.data.media import MediaOptions, MediaResolver
from qvq_tune.data.video import decode_video, encode_videos, load_video, load_video_frames
from qvq_tune.data.messages import Media
from qvq_tune.data.quarantine import RecordError
from qvq_tune.data.vision import PixelCache, image_grid
from qvq_tune.errors import UserError
from qvq_tune.models.registry import get_family

QWEN2_VL = get_family("qwen2_vl")


@pytest.fixture(scope="module")
def processor(tiny_model):
    from qvq_tune.models.loading import load_processor
    # a pixel range wide enough that image size changes the token count
    return load_processor(tiny_model("qwen2_vl"), min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)


@pytest.fixture
def resolver(processor, tmp_path):
    return MediaResolver(processor, MediaOptions(tmp_path / "out_media"), QWEN2_VL)


def image(source=None, data=None):
    return Media("image", source=source, data=data)


def fails(resolver, media, root, code):
    with pytest.raises(RecordError) as e:
        resolver.resolve(media, root)
    assert e.value.code == code, e.value.message
    return e.value.message


# ---- images ---------------------------------------------------------------------------------
def test_local_image_is_measured_like_the_processor(resolver, media_files, processor):
    media_files.image("sub/a.png", 300, 90)
    r = resolver.resolve(image("sub/a.png"), media_files.root)
    assert r.kind == "image" and r.path == str((media_files.root / "sub/a.png").resolve())
    enc = processor.image_processor(images=[Image.open(r.path).convert("RGB")], return_tensors="pt")
    assert list(r.grid_thw) == enc["image_grid_thw"][0].tolist()
    assert r.num_tokens == enc["image_grid_thw"][0].prod().item() // 4
    assert r.meta["sha256"] == hashlib.sha256(Path(r.path).read_bytes()).hexdigest()
    assert str(Path(r.path)) in resolver.drain_touched()


@pytest.mark.parametrize("orientation_format", ["JPEG", "PNG"])
def test_exif_rotation_swaps_sides_as_the_collator_does(resolver, media_files, processor, orientation_format):
    exif = Image.Exif()
    exif[0x0112] = 6                                  # rotated 90 degrees
    name = media_files.image(f"rot.{orientation_format.lower()}", 300, 90, exif=exif.tobytes())
    r = resolver.resolve(image(name), media_files.root)
    _, grid = PixelCache(processor.image_processor).get([r.path])
    assert list(r.grid_thw) == grid[0].tolist()
    assert r.grid_thw != image_grid(processor.image_processor, 90, 300)[0]


def test_the_fast_image_processor_matches_the_reference_one(processor, media_files):
    """The processor loads transformers' torchvision image processor (the fast one). Against
    the PIL reference: the same grids always; the same pixels where no resize is needed;
    after a resize, within a fraction of an 8-bit level on average (measured: diagrams 0,
    smooth photo-like gradients 0.01, white noise, the worst case, 0.39 levels)."""
    import numpy as np
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    fast = processor.image_processor
    assert type(fast).__mro__[1].__name__ == "TorchvisionBackend"
    reference = Qwen2VLImageProcessorPil(**{k: v for k, v in fast.to_dict().items()
                                            if k not in ("image_processor_type", "processor_class")})
    level = 1 / 255 / min(fast.image_std)
    yy, xx = np.mgrid[0:90, 0:300]
    smooth = np.stack([xx * 255 / 300, yy * 255 / 90, (xx + yy) % 255], -1).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (90, 300, 3), dtype=np.uint8)
    cases = [("diagram", Image.open(media_files.root / media_files.image("d.png", 150, 120)).convert("RGB")),
             ("smooth", Image.fromarray(smooth)), ("noise", Image.fromarray(noise)),
             ("no resize", Image.fromarray(noise[:, :224].repeat(3, axis=0)[:224]))]
    for name, img in cases:
        a = fast(images=[img], return_tensors="pt")
        b = reference(images=[img], return_tensors="pt")
        assert torch.equal(a["image_grid_thw"], b["image_grid_thw"]), name
        levels = (a["pixel_values"] - b["pixel_values"]).abs() / level
        if name == "no resize":
            assert img.size == (224, 224) and levels.max() < 1e-3
        else:
            assert levels.mean() < 0.5, name
            if name != "noise":
                assert (levels > 1.01).float().mean() < 0.01, name


def test_missing_and_zero_byte_files(resolver, media_files):
    assert "not found" in fails(resolver, image("nope.png"), media_files.root, "missing_media")
    media_files.write("empty.png", b"")
    fails(resolver, image("empty.png"), media_files.root, "empty_file")
    (media_files.root / "folder.png").mkdir()
    fails(resolver, image("folder.png"), media_files.root, "missing_media")


@pytest.mark.parametrize("cut", ["garbage", "truncated_png", "truncated_jpeg", "flipped_byte_png"])
def test_corrupt_images_fail_at_build_time(resolver, media_files, cut):
    if cut == "garbage":
        media_files.write("bad.png", b"this is not an image at all" * 10)
    else:
        fmt = "JPEG" if cut.endswith("jpeg") else "PNG"
        data = bytearray(media_files.image_bytes(200, 200, fmt))
        if cut.startswith("truncated"):
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0xFF                  # a CRC mismatch inside IDAT
        media_files.write("bad.png", bytes(data))
    fails(resolver, image("bad.png"), media_files.root, "corrupt_media")


def test_pixel_limit_from_the_header_and_pil_bomb_error(processor, media_files, tmp_path):
    media_files.bomb_png("bomb.png")                       # claims 10 gigapixels: PIL's own error
    media_files.bomb_png("big.png", 9000, 8000)            # 72 MP: over our 64 MP default, under PIL's
    r = MediaResolver(processor, MediaOptions(tmp_path / "m"), QWEN2_VL)
    fails(r, image("bomb.png"), media_files.root, "pixel_limit")
    assert "72,000,000 pixels" in fails(r, image("big.png"), media_files.root, "pixel_limit")
    media_files.image("ok.png", 112, 112)
    small = MediaResolver(processor, MediaOptions(tmp_path / "m", max_image_pixels=100 * 100), QWEN2_VL)
    fails(small, image("ok.png"), media_files.root, "pixel_limit")
    assert Image.MAX_IMAGE_PIXELS != 100 * 100             # the guard does not leak into PIL


def test_paths_must_stay_inside_the_root(resolver, media_files, tmp_path):
    outside = tmp_path / "outside.png"
    Image.new("RGB", (64, 64)).save(outside)
    root = media_files.root
    assert "'..'" in fails(resolver, image("../outside.png"), root, "path_escape")
    assert "absolute path" in fails(resolver, image(str(outside)), root, "path_escape")
    (root / "link.png").symlink_to(outside)
    assert "symlink" in fails(resolver, image("link.png"), root, "path_escape")
    (root / "linkdir").symlink_to(tmp_path)
    fails(resolver, image("linkdir/outside.png"), root, "path_escape")
    # inside the root: relative with '..' that stays inside, absolute inside, file:// URL
    media_files.image("a/b.png")
    inside = resolver.resolve(image("a/b.png"), root)
    for spelling in ("a/../a/b.png", str(root / "a/b.png"), f"file://{root / 'a/b.png'}"):
        found = resolver.resolve(image(spelling), root)
        assert (found.path, found.num_tokens) == (str((root / "a/b.png").resolve()), inside.num_tokens), spelling


def test_remote_urls_are_refused_unless_allowed(resolver, processor, media_files, tmp_path):
    fails(resolver, image("https://example.com/a.png"), media_files.root, "remote_url")
    fails(resolver, image("s3://bucket/a.png"), media_files.root, "remote_url")
    payload = media_files.image_bytes(112, 112)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        allowed = MediaResolver(processor, MediaOptions(tmp_path / "dl", allow_remote=True), QWEN2_VL)
        url = f"http://127.0.0.1:{server.server_port}/a.png"
        r = allowed.resolve(image(url), media_files.root)
    finally:
        server.shutdown()
    sha = hashlib.sha256(payload).hexdigest()
    assert r.path == str(tmp_path / "dl" / f"{sha}.png") and Path(r.path).read_bytes() == payload


def test_bytes_data_uri_and_bare_base64_are_stored_content_addressed(resolver, media_files, tmp_path):
    png, jpeg = media_files.image_bytes(112, 112), media_files.image_bytes(64, 64, "JPEG")
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    from_uri = resolver.resolve(image(uri), media_files.root)
    from_bytes = resolver.resolve(image(data=png), media_files.root)
    bare = resolver.resolve(image(base64.b64encode(jpeg).decode()), media_files.root)
    sha = hashlib.sha256(png).hexdigest()
    assert from_uri.path == from_bytes.path == str(tmp_path / "out_media" / f"{sha}.png")
    assert Path(from_uri.path).read_bytes() == png
    assert bare.path.endswith(".jpg") and Path(bare.path).read_bytes() == jpeg
    fails(resolver, image("data:image/png;base64,@@@notbase64"), media_files.root, "corrupt_media")
    fails(resolver, image(data=b"\x00" * 50), media_files.root, "corrupt_media")


# ---- videos ---------------------------------------------------------------------------------
def test_video_file_is_sampled_once_into_frames_matching_the_processor(resolver, processor, media_files):
    from qwen_vl_utils.vision_process import smart_nframes

    media_files.video("clip.mp4", frames=12, fps=4)
    r = resolver.resolve(Media("video", source="clip.mp4"), media_files.root)
    folder = Path(r.path)
    meta = json.loads((folder / "meta.json").read_text())
    n = smart_nframes({"fps": 2.0, "min_frames": 4, "max_frames": 32}, total_frames=12, video_fps=4.0)
    assert len(list(folder.glob("*.png"))) == n == len(meta["frames_indices"]) and meta["video_fps"] == 4.0
    video = load_video(r.path)
    assert tuple(video.frames.shape) == (n, 3, 64, 96)
    assert (video.fps, video.indices, video.total_frames) == (4.0, meta["frames_indices"], 12)
    enc = encode_videos(processor.video_processor, [video])
    assert list(r.grid_thw) == enc["video_grid_thw"][0].tolist()
    assert r.num_tokens == enc["video_grid_thw"][0].prod().item() // 4
    assert r.meta["fps"] == 2.0 and r.meta["sha256"]
    # the same video again reuses the folder; a different sampling makes another
    assert resolver.resolve(Media("video", source="clip.mp4"), media_files.root).path == r.path
    fewer = MediaResolver(processor, MediaOptions(resolver.media_dir, max_frames=4), QWEN2_VL)
    assert fewer.resolve(Media("video", source="clip.mp4"), media_files.root).grid_thw[0] == 2


def test_video_as_frame_list_and_loader_inputs(resolver, media_files):
    names = [media_files.image(f"f/{i}.png", 80, 60) for i in range(5)]
    r = resolver.resolve(Media("video", frames=tuple(names)), media_files.root)
    assert r.grid_thw[0] == 3                                    # 5 frames, padded to 6
    assert load_video_frames(r.path).shape == load_video_frames([media_files.root / n for n in names]).shape
    media_files.video("clip.mp4")
    assert load_video_frames(str(media_files.root / "clip.mp4")).shape[0] == len(
        decode_video(str(media_files.root / "clip.mp4"))[0])


def test_bad_videos(resolver, media_files):
    media_files.image("f/a.png", 80, 60)
    media_files.image("f/b.png", 60, 80)
    assert "one size" in fails(resolver, Media("video", frames=("f/a.png", "f/b.png")), media_files.root,
                               "corrupt_media")
    fails(resolver, Media("video", frames=("f/a.png", "../x.png")), media_files.root, "path_escape")
    media_files.write("broken.mp4", b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    fails(resolver, Media("video", source="broken.mp4"), media_files.root, "corrupt_media")
    media_files.write("empty.mp4", b"")
    fails(resolver, Media("video", source="empty.mp4"), media_files.root, "empty_file")
    fails(resolver, Media("video", source="missing.mp4"), media_files.root, "missing_media")


# ---- files.iter_raw -------------------------------------------------------------------------
def test_jsonl_lines_malformed_json_and_blank_lines(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": 2,}\n[1, 2]\n\xff\xfe\n{"a": 3}\n')
    rows = list(iter_raw(f))
    assert [(o.line, r if isinstance(r, (dict, list)) else r.code) for o, r in rows] == [
        (1, {"a": 1}), (3, "malformed_json"), (4, [1, 2]), (5, "malformed_json"), (6, {"a": 3})]
    assert "line 3" in rows[1][1].message and rows[1][1].record == '{"a": 2,}'


def test_json_array_object_jsonl_in_disguise_and_broken_json(tmp_path):
    (tmp_path / "arr.json").write_text(json.dumps([{"a": 1}, {"a": 2}]))
    (tmp_path / "one.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "lines.json").write_text('{"a": 1}\n{"a": 2}\n')
    (tmp_path / "bad.json").write_text('[\n{"a": 1},\n{"a": \n')
    assert [o.index for o, _ in iter_raw(tmp_path / "arr.json")] == [0, 1]
    assert [r for _, r in iter_raw(tmp_path / "one.json")] == [{"a": 1}]
    assert [o.line for o, _ in iter_raw(tmp_path / "lines.json")] == [1, 2]
    [(origin, err)] = list(iter_raw(tmp_path / "bad.json"))
    assert err.code == "malformed_json" and origin.line == 4


def test_parquet_arrow_and_hf_folders_keep_image_bytes_raw(tmp_path, media_files):
    import datasets
    png = media_files.image_bytes(64, 64)
    rows = {"question": ["q0", "q1"], "answer": ["a0", "a1"],
            "image": [{"bytes": png, "path": "x.png"}, {"bytes": png, "path": None}]}
    features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "image": datasets.Image()})
    ds = datasets.Dataset.from_dict(rows, features=features)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "hfdict"))
    arrow = next((tmp_path / "hf").glob("*.arrow"))
    for path, sources in [(tmp_path / "d.parquet", None), (tmp_path / "hf", None), (arrow, None),
                          (tmp_path / "hfdict", ["train", "train", "test"])]:
        got = list(iter_raw(path))
        assert all(r["image"]["bytes"] == png for _, r in got), path
        assert [o.index for o, _ in got] == ([0, 1, 0] if sources else [0, 1])
        if sources:
            assert [Path(o.source).name for o, _ in got] == sources


def test_folder_inputs_are_sorted_recursive_and_skip_hidden(tmp_path):
    for name in ("b.jsonl", "a/z.json", "a/c.parquet", ".hidden/x.jsonl", "images/x.png", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    assert [p.relative_to(tmp_path).as_posix() for p in input_files(tmp_path)] == [
        "a/c.parquet", "a/z.json", "b.jsonl"]
    with pytest.raises(UserError, match="no .jsonl"):
        input_files(tmp_path / "images")
    with pytest.raises(UserError, match="unsupported input type"):
        input_files(tmp_path / "notes.txt")
