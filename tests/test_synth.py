"""`data synth`: deterministic, complete, atomic; every format reads back to the same data."""

import json

import numpy as np
import pytest
from PIL import Image

from clipdistill.data import formats, synth
from clipdistill.io import read_json, tree_hash
from clipdistill.params import SplitParams


def test_same_seed_same_bytes(tmp_path, smoke_params, smoke_data):
    for split in ("pretrain", "distill_shifted"):
        again = synth.synthesize(smoke_params, split, tmp_path / split)
        assert tree_hash(tmp_path / split) == tree_hash(smoke_data / split)
        assert (tmp_path / split / "manifest.json").read_bytes() == (smoke_data / split / "manifest.json").read_bytes()
        assert again["content_sha256"] == read_json(smoke_data / split / "manifest.json")["content_sha256"]


def test_other_seed_other_world(tmp_path, smoke_params):
    other = smoke_params.model_copy(update={"seed": 1})
    synth.synth_split(other, "vqa_eval", other.splits["vqa_eval"], tmp_path / "s1")
    synth.synth_split(smoke_params, "vqa_eval", smoke_params.splits["vqa_eval"], tmp_path / "s0")
    assert tree_hash(tmp_path / "s1") != tree_hash(tmp_path / "s0")


def test_split_does_not_depend_on_other_splits(tmp_path, smoke_params, smoke_data):
    bigger = {**smoke_params.splits, "pretrain": SplitParams(size=99)}
    params = smoke_params.model_copy(update={"splits": bigger})
    synth.synth_split(params, "clip_eval", params.splits["clip_eval"], tmp_path / "clip_eval")
    assert tree_hash(tmp_path / "clip_eval") == tree_hash(smoke_data / "clip_eval")


def test_manifest_counts_and_layout(smoke_params, smoke_data):
    for name, split in smoke_params.splits.items():
        manifest = read_json(smoke_data / name / "manifest.json")
        assert manifest["content_sha256"] == tree_hash(smoke_data / name)
        assert manifest["params"] == synth.split_params(smoke_params, name)
        assert manifest["params"]["size"] == split.size and "splits" not in manifest["params"]
        counts = manifest["counts"]
        assert counts["images"] == split.size == len(list((smoke_data / name / "images").glob("*.png")))
        assert sum(counts["question_types"].values()) == counts["questions"]
        assert counts["questions"] <= split.size * smoke_params.questions_per_image
    assert sorted(p.name for p in smoke_data.iterdir()) == sorted(smoke_params.splits)


def test_unknown_split_is_refused(tmp_path, smoke_params):
    from clipdistill.io import DataError

    with pytest.raises(DataError, match="unknown split 'nope'; params define: clip_eval, distill"):
        synth.synthesize(smoke_params, "nope", tmp_path / "nope")
    assert list(tmp_path.iterdir()) == []


def test_images_have_configured_size_and_styles_differ(smoke_params, smoke_data):
    plain = np.asarray(Image.open(smoke_data / "distill" / "images" / "000000.png"))
    shifted = np.asarray(Image.open(smoke_data / "distill_shifted" / "images" / "000000.png"))
    assert plain.shape == shifted.shape == (smoke_params.image_size, smoke_params.image_size, 3)
    # anti-aliasing: edge pixels take intermediate values, not only background and fills
    assert len(np.unique(plain.reshape(-1, 3), axis=0)) > 5
    assert np.median(shifted) > 150 > np.median(plain)  # light vs dark background


def test_every_format_reads_back_the_same_samples(smoke_data, smoke_params):
    root = smoke_data / "vqa_eval"
    pairs, bad = formats.read_pairs_csv(root / "pairs.csv")
    assert len(pairs) == smoke_params.splits["vqa_eval"].size and not bad.dropped
    shards = sorted((root / "shards").glob("*.tar"))
    assert len(shards) == -(-len(pairs) // smoke_params.shard_size)
    from_shards = list(formats.iter_shards(shards))
    assert [c for _, _, c in from_shards] == [p.caption for p in pairs]
    for (_, img, _), pair in zip(from_shards, pairs):
        assert np.array_equal(np.asarray(img), np.asarray(formats.load_image(pair.image)))
    vqa, _ = formats.read_vqa(root / "questions.json", root / "annotations.json", root)
    llava, _ = formats.read_llava(root / "llava.json", root)
    assert len(llava) == len({r.image for r in vqa}) > 0  # one multi-turn conversation per image
    turns = [(conv["image"], human, gpt) for conv in llava
             for human, gpt in zip(conv["conversations"][::2], conv["conversations"][1::2])]
    assert len(turns) == len(vqa)
    for r, (image, human, gpt) in zip(vqa, turns):
        assert len(r.answers) == 10 and r.question_type and r.answer_type in ("yes/no", "number", "other")
        assert image == r.image and r.question in human["value"] and human["from"] == "human"
        assert human["value"].endswith(synth.SHORT_ANSWER) and gpt == {"from": "gpt", "value": r.answer}
    for conv in llava:
        firsts = [t["value"].startswith("<image>\n") for t in conv["conversations"][::2]]
        assert firsts[0] and not any(firsts[1:])  # the image token once, in the first turn
    labels = read_json(root / "labels.json")
    assert labels["images"] == [p.image.relative_to(root).as_posix() for p in pairs]
    for spec in labels["label_sets"].values():
        assert len(spec["labels"]) == len(pairs) and spec["templates"]
        assert all(-1 <= y < len(spec["classnames"]) for y in spec["labels"])
    scenes = read_json(root / "scenes.json")
    assert [len(s) for s in scenes] == [1 + y for y in labels["label_sets"]["object_count"]["labels"]]


def test_failure_leaves_nothing(tmp_path, smoke_params, monkeypatch):
    calls = {"n": 0}
    real = synth.render.render

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth.render, "render", flaky)
    with pytest.raises(RuntimeError):
        synth.synthesize(smoke_params, "pretrain", tmp_path / "pretrain")
    assert list(tmp_path.iterdir()) == []


def test_rerun_replaces_previous_output_atomically(tmp_path, smoke_params):
    out = tmp_path / "vqa_eval"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    synth.synthesize(smoke_params, "vqa_eval", out)
    assert not (out / "stale.txt").exists() and (out / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vqa_eval"]


def test_webdataset_samples_carry_scene_metadata(smoke_data):
    import tarfile

    shard = sorted((smoke_data / "pretrain" / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        assert names[:3] == ["000000.png", "000000.txt", "000000.json"]
        meta = json.loads(tar.extractfile("000000.json").read())
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert meta == read_json(smoke_data / "pretrain" / "scenes.json")[0]


def test_hard_negative_groups_share_colours_and_differ_in_shape_or_cell(tmp_path, smoke_params):
    """A pretrain split with hard_negatives 4: every group of 4 consecutive scenes has the same
    colours and sizes; each later scene differs from the first in one object's shape or cell."""
    splits = {**smoke_params.splits, "pretrain": SplitParams(size=40, hard_negatives=4)}
    params = smoke_params.model_copy(update={"splits": splits})
    synth.synthesize(params, "pretrain", tmp_path / "pretrain")
    scenes = read_json(tmp_path / "pretrain" / "scenes.json")
    captions = [p.caption for p in formats.read_pairs_csv(tmp_path / "pretrain" / "pairs.csv")[0]]
    key = lambda o: (o["color"], o["size"])  # noqa: E731
    for g in range(0, 40, 4):
        base = scenes[g]
        for k in range(1, 4):
            other = scenes[g + k]
            assert [key(o) for o in other] == [key(o) for o in base]
            diff = [(a, b) for a, b in zip(base, other) if a != b]
            assert len(diff) == 1 and (diff[0][0]["shape"] != diff[0][1]["shape"]
                                       or (diff[0][0]["row"], diff[0][0]["col"]) != (diff[0][1]["row"], diff[0][1]["col"]))
    assert len(set(captions)) == 40
    assert read_json(tmp_path / "pretrain" / "manifest.json")["params"]["hard_negatives"] == 4


def test_hard_negative_shape_rate_one_makes_shape_only_negatives(tmp_path, smoke_params):
    """hard_negative_shape_rate 1 reaches the generator: every later scene of a group differs from
    its first in one object's shape, in the same cell (captions must be told apart by shape)."""
    splits = {**smoke_params.splits, "pretrain": SplitParams(size=24, hard_negatives=4, hard_negative_shape_rate=1.0)}
    synth.synthesize(smoke_params.model_copy(update={"splits": splits}), "pretrain", tmp_path / "pretrain")
    scenes = read_json(tmp_path / "pretrain" / "scenes.json")
    for g in range(0, 24, 4):
        for k in range(1, 4):
            (a, b), = [(a, b) for a, b in zip(scenes[g], scenes[g + k]) if a != b]
            assert a["shape"] != b["shape"] and (a["row"], a["col"]) == (b["row"], b["col"])
    assert read_json(tmp_path / "pretrain" / "manifest.json")["params"]["hard_negative_shape_rate"] == 1.0
