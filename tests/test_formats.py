"""Readers for real datasets: round-trips, COCO/GQA fixtures, and every bad-input case."""

import json

import pytest
from PIL import Image

from clipdistill.data import formats
from clipdistill.io import DataError


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "ds"
    (root / "img").mkdir(parents=True)
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (8, 8), colour).save(root / "img" / f"{i}.jpg")
    return root


def write_csv(root, lines, name="pairs.csv"):
    path = root / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_csv_round_trip(images):
    rows = [(f"img/{i}.jpg", f"caption number {i}") for i in range(3)]
    formats.write_pairs_csv(images / "pairs.csv", rows)
    pairs, bad = formats.read_pairs_csv(images / "pairs.csv")
    assert [(p.image.relative_to(images).as_posix(), p.caption) for p in pairs] == rows
    assert not bad.dropped


def test_csv_accepts_extra_columns_in_any_order_and_crlf(images):
    path = write_csv(images, [b"id\ttitle\tfilepath\r", b"7\ta red square\timg/0.jpg\r"])
    pairs, _ = formats.read_pairs_csv(path)
    assert pairs[0].caption == "a red square" and pairs[0].image.name == "0.jpg"


def test_webdataset_round_trip(tmp_path, images):
    jpg = (images / "img" / "1.jpg").read_bytes()
    samples = [{"__key__": f"k{i}", "jpg": jpg, "txt": f"sample {i}".encode()} for i in range(5)]
    paths = formats.write_shards(tmp_path / "shards", samples, shard_size=2)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    got = list(formats.iter_shards(paths))
    assert [(k, c) for k, _, c in got] == [(f"k{i}", f"sample {i}") for i in range(5)]
    assert got[0][1].size == (8, 8)


def test_coco_captions(images):
    coco = {"images": [{"id": 10, "file_name": "img/0.jpg"}, {"id": 11, "file_name": "img/1.jpg"}],
            "annotations": [{"image_id": 10, "caption": "A red thing."},
                            {"image_id": 11, "caption": " A  blue\nthing "}]}
    (images / "captions.json").write_text(json.dumps(coco))
    pairs, _ = formats.read_coco_captions(images / "captions.json", images)
    assert [p.caption for p in pairs] == ["A red thing.", "A blue thing"]


def test_vqa_round_trip_and_coco_style_pattern(images):
    recs = [formats.VQARecord(5, 1, images / "img/1.jpg", "What colour?", "blue",
                              ("blue",) * 8 + ("navy", "2"), "what color", "other")]
    formats.write_vqa(images / "q.json", images / "a.json", recs, "val")
    got, _ = formats.read_vqa(images / "q.json", images / "a.json", images, "img/{image_id}.jpg")
    assert got == recs


def test_llava_round_trip(images):
    recs = [{"id": "1", "image": "img/2.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "green"}]},
        {"id": "2", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    formats.write_llava(images / "llava.json", recs)
    got, _ = formats.read_llava(images / "llava.json", images)
    assert got[0]["image"] == images / "img/2.jpg" and got[1] == recs[1]


def test_gqa_style(images):
    gqa = {"0123": {"imageId": "0", "question": "Is it red?", "answer": "yes",
                    "types": {"semantic": "attr", "structural": "verify"}}}
    (images / "gqa.json").write_text(json.dumps(gqa))
    (got,), _ = formats.read_gqa(images / "gqa.json", images, image_pattern="img/{image_id}.jpg")
    assert got.question_id == "0123" and got.answers == ("yes",) * 10 and got.question_type == "attr"


# ------------------------------------------------------------------ bad input

BAD_CSV_CASES = {
    "missing image": ([b"filepath\ttitle", b"img/0.jpg\tok", b"img/9.jpg\tgone"], "pairs.csv:3: image not found"),
    "corrupt image": ([b"filepath\ttitle", b"img/bad.jpg\tbroken"], "pairs.csv:2: corrupt image"),
    "empty caption": ([b"filepath\ttitle", b"img/0.jpg\t   "], "pairs.csv:2: empty caption"),
    "non-utf8 caption": ([b"filepath\ttitle", b"img/0.jpg\tcaf\xe9"], "pairs.csv:2: not UTF-8"),
    "missing column": ([b"filepath\ttitle", b"img/0.jpg\tfine", b"img/1.jpg"], "pairs.csv:3: expected 2"),
    "escaping path": ([b"filepath\ttitle", b"../outside.jpg\tsneaky"], "pairs.csv:2: path '../outside.jpg' escapes"),
    "absolute path": ([b"filepath\ttitle", b"/etc/passwd\tsneaky"], "escapes the data root"),
}


@pytest.mark.parametrize("case", BAD_CSV_CASES)
def test_bad_csv_rows_error_with_file_and_line(images, case):
    (images / "img" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images.parent / "outside.jpg").write_bytes((images / "img" / "0.jpg").read_bytes())
    lines, expected = BAD_CSV_CASES[case]
    path = write_csv(images, lines)
    with pytest.raises(DataError, match=expected.replace("(", r"\(")) as info:
        formats.read_pairs_csv(path)
    assert "\n" not in str(info.value)
    pairs, bad = formats.read_pairs_csv(path, on_bad_sample="skip")
    assert len(bad.dropped) == 1 and len(pairs) == len(lines) - 2


def test_csv_without_required_header(images):
    path = write_csv(images, [b"path\tcaption", b"img/0.jpg\tx"])
    with pytest.raises(DataError, match=r"pairs.csv:1: header lacks column\(s\) \['filepath', 'title'\]"):
        formats.read_pairs_csv(path)


def test_skip_reports_what_it_dropped(images, capsys):
    path = write_csv(images, [b"filepath\ttitle", b"img/0.jpg\tok", b"img/7.jpg\tx", b"img/1.jpg\t"])
    pairs, bad = formats.read_pairs_csv(path, on_bad_sample="skip")
    assert len(pairs) == 1 and len(bad.dropped) == 2
    assert "skipped 2 bad samples" in capsys.readouterr().err


def test_unknown_bad_sample_policy(images):
    with pytest.raises(DataError, match="on_bad_sample must be"):
        formats.read_pairs_csv(write_csv(images, [b"filepath\ttitle"]), on_bad_sample="ignore")


@pytest.mark.parametrize("reader", ["llava", "vqa", "coco", "gqa"])
def test_malformed_json_names_file_and_line(images, reader):
    path = images / "broken.json"
    path.write_text('{"a": 1,\n "b": }')
    call = {"llava": lambda: formats.read_llava(path, images),
            "vqa": lambda: formats.read_vqa(path, path, images),
            "coco": lambda: formats.read_coco_captions(path, images),
            "gqa": lambda: formats.read_gqa(path, images)}[reader]
    with pytest.raises(DataError, match=r"broken.json:2:\d+: malformed JSON"):
        call()


def test_llava_structure_errors(images):
    bad = [{"id": "1", "image": "img/0.jpg", "conversations": [{"from": "human", "value": "no token"},
                                                               {"from": "gpt", "value": "x"}]}]
    (images / "l.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"l.json: \[0\] id '1': first human turn lacks the <image> token"):
        formats.read_llava(images / "l.json", images)
    (images / "l.json").write_text(json.dumps([{"id": "1", "conversations": [{"from": "bot", "value": 1}]}]))
    with pytest.raises(DataError, match="conversations must be"):
        formats.read_llava(images / "l.json", images)
    (images / "l.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataError, match="expected a JSON list"):
        formats.read_llava(images / "l.json", images)


def test_vqa_missing_annotation_and_escaping_pattern(images):
    (images / "q.json").write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 0, "question": "?"}]}))
    (images / "a.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError, match=r"a.json: question_id 1: no annotation"):
        formats.read_vqa(images / "q.json", images / "a.json", images, "img/{image_id}.jpg")
    (images / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": 1, "answers": [{"answer": "x"}] * 10}]}))
    with pytest.raises(DataError, match="escapes the data root"):
        formats.read_vqa(images / "q.json", images / "a.json", images, "../{image_id}.jpg")


def test_corrupt_shard_sample_and_unreadable_shard(tmp_path, images):
    samples = [{"__key__": "a", "png": b"garbage", "txt": b"x"},
               {"__key__": "b", "jpg": (images / "img/0.jpg").read_bytes(), "txt": b"\xff\xfe"},
               {"__key__": "c", "txt": b"no image"},
               {"__key__": "d", "jpg": (images / "img/0.jpg").read_bytes(), "txt": b"fine"}]
    (shard,) = formats.write_shards(tmp_path, samples, 10)
    with pytest.raises(DataError, match=r"shard-000000.tar:a: corrupt image"):
        list(formats.iter_shards([shard]))
    bad = formats.BadSamples("skip")
    got = list(formats.iter_shards([shard], bad=bad))
    assert [k for k, _, _ in got] == ["d"] and len(bad.dropped) == 3
    assert any("not UTF-8" in m for m in bad.dropped)
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="x.tar: unreadable shard"):
        list(formats.iter_shards([tmp_path / "x.tar"]))
