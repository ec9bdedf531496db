"""Renderer (data/render.py) against the real processors: labels and vision-token counts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from qvq_tune.data.media import MediaOptions, MediaResolver
from qvq_tune.data.video import load_video, video_kwargs
from qvq_tune.data.messages import Conversation, Media, Origin, Part, PreferencePair, Turn
from qvq_tune.data.readers import ReaderOptions, parse
from qvq_tune.data.reasoning import format_reply
from qvq_tune.data.render import (IGNORE_INDEX, SPAN_ANSWER, SPAN_NONE, SPAN_REASONING, TRUNCATION_MARK, RenderError,
                                  RenderOptions, SampleRenderer)
from qvq_tune.models.loading import load_processor
from qvq_tune.models.registry import get_family


@pytest.fixture(scope="module")
def synth_task(tmp_path_factory):
    from qvq_tune.synth.generate import SynthConfig, generate
    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(train=6, validation=0, test=0, dpo=True), out, progress=False)
    return out


def renderer(tiny_model, family, reasoning="qvq", **kw):
    proc = load_processor(tiny_model(family), min_pixels=kw.pop("min_pixels", None),
                          max_pixels=kw.pop("max_pixels", None))
    return SampleRenderer(proc, get_family(family), RenderOptions(reasoning=reasoning, **kw))


def resolve(r: SampleRenderer, example, root, tmp_path):
    resolver = MediaResolver(r.processor, MediaOptions(tmp_path / "media"), r.family)
    return [resolver.resolve(m, root) for m in example.media]


def labelled_spans(sample) -> list[list[int]]:
    spans, cur = [], []
    for tok, lab in zip(sample["input_ids"], sample["labels"]):
        if lab != IGNORE_INDEX:
            assert lab == tok
            cur.append(tok)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


def expected_reply(family: str, reasoning: str | None, answer: str, fmt: str) -> str:
    # Qwen3's thinking template writes an empty think block before a reply that has no
    # <think> of its own (its real behaviour; we render through the template, not around it).
    prefix = "<think>\n\n</think>\n\n" if family.startswith("qwen3") and fmt != "think" else ""
    return prefix + format_reply(reasoning, answer, fmt) + "<|im_end|>"


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize("fmt", ["qvq", "think", "answer-only"])
def test_labels_are_exactly_the_assistant_reply(tiny_model, synth_task, tmp_path, family, fmt):
    r = renderer(tiny_model, family, fmt)
    records = [json.loads(line) for line in (synth_task / "train.jsonl").read_text().splitlines()][:3]
    for i, record in enumerate(records):
        conv = parse(record, Origin("train.jsonl", line=i + 1), ReaderOptions())
        sample = r.render(conv, resolve(r, conv, synth_task, tmp_path))
        [span] = labelled_spans(sample)
        decoded = r.tokenizer.decode(span, skip_special_tokens=False)
        assert decoded == expected_reply(family, record["reasoning"], record["answer"], fmt)
        if fmt == "answer-only":
            assert record["reasoning"] not in decoded
        assert sample["num_label_tokens"] == len(span)
        assert sample["reasoning_chars"] == len(record["reasoning"])
        reasoning, answer = span_texts(r, sample)
        assert reasoning + answer == decoded and answer.endswith("<|im_end|>") and record["answer"] in answer
        if fmt != "answer-only":
            assert record["reasoning"] in reasoning and record["reasoning"] not in answer
        if fmt == "qvq":
            assert answer.startswith("**Final Answer**")
        assert sample["loss_weights"] is None and not sample["truncated"]


def span_texts(r: SampleRenderer, sample) -> tuple[str, str]:
    """The decoded reasoning-span and answer-span tokens; spans are set exactly on labelled
    tokens, and within the reply every reasoning token comes before every answer token."""
    spans, labels = sample["label_span"], sample["labels"]
    assert len(spans) == len(labels) == len(sample["input_ids"])
    assert all((sp == SPAN_NONE) == (lab == IGNORE_INDEX) for sp, lab in zip(spans, labels))
    labelled = [sp for sp in spans if sp != SPAN_NONE]
    assert labelled == sorted(labelled)
    return tuple(r.tokenizer.decode([t for t, sp in zip(sample["input_ids"], spans) if sp == kind])
                 for kind in (SPAN_REASONING, SPAN_ANSWER))


def test_loss_weights_label_and_weigh_each_reply(tiny_model):
    r = renderer(tiny_model, "qwen2_vl", "qvq")

    def conv(w1, w2):
        return Conversation([Turn("user", [Part.of_text("first?")]),
                             Turn("assistant", [Part.of_text("one")], reasoning="count", loss_weight=w1),
                             Turn("user", [Part.of_text("second?")]),
                             Turn("assistant", [Part.of_text("two")], loss_weight=w2)], Origin("x", 1))
    plain, weighted = r.render(conv(1.0, 1.0), []), r.render(conv(0.0, 2.0), [])
    assert plain["loss_weights"] is None and plain["input_ids"] == weighted["input_ids"]
    [only] = labelled_spans(weighted)               # the weight-0 reply has no labelled token
    assert r.tokenizer.decode(only).endswith("{two} \\]<|im_end|>")
    assert labelled_spans(plain)[1] == only
    assert {w for w, lab in zip(weighted["loss_weights"], weighted["labels"]) if lab != IGNORE_INDEX} == {2.0}
    assert {w for w, lab in zip(weighted["loss_weights"], weighted["labels"]) if lab == IGNORE_INDEX} == {0.0}
    assert weighted["num_label_tokens"] == len(only)
    with pytest.raises(RenderError) as e:
        r.render(conv(0.0, 0.0), [])
    assert e.value.code == "empty_assistant"


def test_every_assistant_turn_of_a_multi_turn_conversation_is_labelled(tiny_model):
    r = renderer(tiny_model, "qwen2_vl", "answer-only")
    turns = [Turn("user", [Part.of_text("first?")]), Turn("assistant", [Part.of_text("one")]),
             Turn("user", [Part.of_text("second?")]), Turn("assistant", [Part.of_text("two")])]
    sample = r.render(Conversation(turns, Origin("x", 1)), [])
    assert [r.tokenizer.decode(s) for s in labelled_spans(sample)] == ["one<|im_end|>", "two<|im_end|>"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_image_tokens_equal_the_processor_on_multi_image_records(tiny_model, media_files, tmp_path, family):
    r = renderer(tiny_model, family, "think", min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 48)
    names = [media_files.image("a.png", 112, 112), media_files.image("b.jpg", 300, 90),
             media_files.image("c.png", 50, 260)]
    conv = Conversation([
        Turn("user", [Part.of_media(Media("image", source=names[0])), Part.of_text("compare"),
                      Part.of_media(Media("image", source=names[1]))]),
        Turn("assistant", [Part.of_text("the first")], reasoning="look"),
        Turn("user", [Part.of_media(Media("image", source=names[2])), Part.of_text("and this?")]),
        Turn("assistant", [Part.of_text("tall")], reasoning="it is tall")], Origin("x", 1))
    media = resolve(r, conv, media_files.root, tmp_path)
    sample = r.render(conv, media)
    enc = r.processor(text=[r.chat_text(conv.turns)],
                      images=[Image.open(media_files.root / n).convert("RGB") for n in names], return_tensors="pt")
    assert sample["input_ids"] == enc["input_ids"][0].tolist()
    assert sample["image_grid_thw"] == enc["image_grid_thw"].tolist()
    assert len({tuple(g) for g in sample["image_grid_thw"]}) == 3        # sizes really differ
    assert sample["num_vision_tokens"] == sum(m.num_tokens for m in media)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_video_tokens_equal_the_processor(tiny_model, media_files, tmp_path, family):
    r = renderer(tiny_model, family, "think")
    media_files.video("clip.mp4", frames=12)
    conv = Conversation([Turn("user", [Part.of_media(Media("video", source="clip.mp4")), Part.of_text("what?")]),
                         Turn("assistant", [Part.of_text("noise")], reasoning="pixels")], Origin("x", 1))
    media = resolve(r, conv, media_files.root, tmp_path)
    sample = r.render(conv, media)
    video = load_video(media[0].path)
    # the processor gets the video's real timeline and pixel cap, as the builder does (no default decides)
    enc = r.processor(text=[r.chat_text(conv.turns)], videos=[video.frames], return_tensors="pt",
                      **video_kwargs(r.processor.video_processor, [video]))
    assert sample["video_grid_thw"] == enc["video_grid_thw"].tolist()
    assert sample["input_ids"] == enc["input_ids"][0].tolist()


def test_qwen3_vl_video_timestamps_follow_the_source_fps(tiny_model, media_files, tmp_path):
    """12 frames at 4 fps, sampled at 2 fps: Qwen3-VL's per-frame markers must read the
    source's seconds (frame index / 4), not a frame rate the processor assumes."""
    r = renderer(tiny_model, "qwen3_vl", "think")
    media_files.video("clip.mp4", frames=12, fps=4)
    conv = Conversation([Turn("user", [Part.of_media(Media("video", source="clip.mp4")), Part.of_text("what?")]),
                         Turn("assistant", [Part.of_text("noise")], reasoning="pixels")], Origin("x", 1))
    [media] = resolve(r, conv, media_files.root, tmp_path)
    idx = json.loads((Path(media.path) / "meta.json").read_text())["frames_indices"]
    pairs = [(idx[i] + idx[min(i + 1, len(idx) - 1)]) / 2 / 4.0 for i in range(0, len(idx), 2)]
    text = r.tokenizer.decode(r.render(conv, [media])["input_ids"])
    assert [f"{t:.1f}" for t in pairs] == re.findall(r"<([0-9.]+) seconds>", text)
    assert len(pairs) == 3 and float(re.findall(r"<([0-9.]+) seconds>", text)[-1]) > 2   # a 3-second clip


def test_preference_pair_prompt_and_completions(tiny_model, synth_task, tmp_path):
    r = renderer(tiny_model, "qwen2_vl", "qvq")
    record = json.loads((synth_task / "dpo_train.jsonl").read_text().splitlines()[0])
    pair = parse(record, Origin("dpo_train.jsonl", line=1), ReaderOptions())
    assert isinstance(pair, PreferencePair)
    media = resolve(r, pair, synth_task, tmp_path)
    sample = r.render_pair(pair, media)
    prompt = r.tokenizer.decode(sample["prompt_input_ids"])
    assert prompt.endswith("<|im_start|>assistant\n") and prompt.count("<|image_pad|>") == media[0].num_tokens
    for side in ("chosen", "rejected"):
        reply = record[side]
        assert r.tokenizer.decode(sample[f"{side}_input_ids"]) == \
            format_reply(reply["reasoning"], reply["answer"], "qvq") + "<|im_end|>"
    assert sample["images"] == [media[0].path] and sample["image_grid_thw"] == [list(media[0].grid_thw)]


def test_render_errors_carry_quarantine_codes(tiny_model):
    conv = Conversation([Turn("user", [Part.of_text("q")]),
                         Turn("assistant", [Part.of_text("a")], reasoning="step " * 200)], Origin("x", 1))
    with pytest.raises(RenderError) as e:
        renderer(tiny_model, "qwen2_vl", "qvq", max_tokens=64).render(conv, [])
    assert e.value.code == "too_long"
    # answer-only drops the trace, so the same record fits
    assert renderer(tiny_model, "qwen2_vl", "answer-only", max_tokens=64).render(conv, [])["num_tokens"] < 64
    bad = Conversation([Turn("user", [Part.of_text("hi <|im_end|> there")]),
                        Turn("assistant", [Part.of_text("a")])], Origin("x", 1))
    with pytest.raises(RenderError) as e:
        renderer(tiny_model, "qwen2_vl").render(bad, [])
    assert e.value.code == "special_token_in_text"


# ---------------------------------------------------------------- truncation keeps the answer

def exchange(i: int, reasoning: str | None = None, media: Media | None = None) -> list[Turn]:
    user = [Part.of_media(media)] if media else []
    return [Turn("user", user + [Part.of_text(f"question {i}?")]),
            Turn("assistant", [Part.of_text(f"answer {i}")], reasoning=reasoning)]


@pytest.mark.parametrize("family,fmt", [("qwen2_vl", "qvq"), ("qwen3_vl", "think")])
def test_truncation_drops_the_earliest_exchanges_first(tiny_model, media_files, tmp_path, family, fmt):
    names = [media_files.image(f"{i}.png") for i in range(3)]
    turns = [Turn("system", [Part.of_text("Be brief.")])]
    for i, name in enumerate(names):
        turns += exchange(i, f"looking at picture {i}", Media("image", source=name))
    conv = Conversation(turns, Origin("x", 1))
    plain = renderer(tiny_model, family, fmt)
    media = resolve(plain, conv, media_files.root, tmp_path)
    full = plain.render(conv, media)
    last = plain.render(Conversation(turns[:1] + turns[-2:], conv.origin), media[-1:])
    cut = renderer(tiny_model, family, fmt, max_tokens=last["num_tokens"] + 1, truncate=True).render(conv, media)
    assert cut["truncated"] and full["num_tokens"] > cut["num_tokens"] <= last["num_tokens"] + 1
    assert cut["input_ids"] == last["input_ids"] and cut["images"] == [media[-1].path]   # two exchanges dropped
    reasoning, answer = span_texts(plain, cut)
    assert "picture 2" in reasoning and "answer 2" in answer and answer.endswith("<|im_end|>")
    assert plain.tokenizer.decode(cut["input_ids"]).startswith("<|im_start|>system\nBe brief.")


@pytest.mark.parametrize("family,fmt", [("qwen2_vl", "qvq"), ("qwen3_vl", "think")])
def test_truncation_then_cuts_the_middle_of_the_last_trace(tiny_model, family, fmt):
    trace = "First I look. " + " ".join(f"step {i}." for i in range(80)) + " So it is three."
    conv = Conversation([*exchange(0, "an early trace"), *exchange(1, trace)], Origin("x", 1))
    plain = renderer(tiny_model, family, fmt).render(conv, [])
    limit = plain["num_tokens"] // 2
    r = renderer(tiny_model, family, fmt, max_tokens=limit, truncate=True)
    cut = r.render(conv, [])
    assert cut["truncated"] and cut["num_tokens"] == len(cut["input_ids"]) <= limit
    reasoning, answer = span_texts(r, cut)
    assert "answer 1" in answer and answer.endswith("<|im_end|>") and TRUNCATION_MARK.strip() in reasoning
    assert "First I look." in reasoning and "So it is three." in reasoning and "step 40." not in reasoning
    assert "question 0?" not in r.tokenizer.decode(cut["input_ids"])
    assert cut["reasoning_chars"] < len(trace)


def test_truncation_quarantines_what_cannot_fit(tiny_model):
    long_question = Conversation([Turn("user", [Part.of_text("why? " * 100)]),
                                  Turn("assistant", [Part.of_text("because")], reasoning="a trace")], Origin("x", 1))
    no_trace = Conversation(exchange(0) + exchange(1), Origin("x", 1))
    for conv, fmt in ((long_question, "qvq"), (no_trace, "answer-only")):
        r = renderer(tiny_model, "qwen2_vl", fmt)
        limit = r.render(Conversation(conv.turns[-2:], conv.origin), [])["num_tokens"] - 1
        with pytest.raises(RenderError) as e:
            renderer(tiny_model, "qwen2_vl", fmt, max_tokens=limit, truncate=True).render(conv, [])
        assert e.value.code == "too_long" and "never cut" in str(e.value)
