"""The feature store: equals a direct teacher forward, replays its views exactly, streams
from memory-mapped shards, and refuses data or preprocessing it was not made from."""

import numpy as np
import pytest
import torch

from clipdistill.data.splits import load_split
from clipdistill.features.store import FeatureStore, StoreMismatch, extract, replay_views, sample_boxes
from clipdistill.models import load_model_dir, preprocess_images
from clipdistill.params import FeatureParams


@pytest.fixture(scope="module")
def stores(teacher_dir, world, tmp_path_factory):
    bundle, split = load_model_dir(teacher_dir), load_split(world / "distill")
    root = tmp_path_factory.mktemp("stores")
    out = {}
    for dtype in ("float32", "float16", "bfloat16"):
        spec = FeatureParams(dtype=dtype, views=2, shard_size=7, batch_size=5, patch_tokens=True)
        extract(bundle, split, spec, root / dtype)
        out[dtype] = FeatureStore(root / dtype)
    return bundle, split, out


@torch.no_grad()
def test_store_equals_direct_teacher_forward(stores):
    bundle, split, by_dtype = stores
    x = preprocess_images(split.images, bundle.preprocess)
    img = bundle.model.encode_image(x, normalize=True)
    txt = bundle.model.encode_text(bundle.tokenizer(split.captions), normalize=True)
    layers = len(bundle.model.visual.transformer.resblocks)
    patches = bundle.model.visual.forward_intermediates(
        x, indices=[layers - 2], intermediates_only=True, output_fmt="NLC")["image_intermediates"][0]
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
    for dtype, store in by_dtype.items():
        everything = np.arange(len(store))
        assert store.get("image_emb", everything).dtype == getattr(torch, dtype)
        for key, ref in (("image_emb", img), ("text_emb", txt), ("patch_tokens", patches)):
            got = store.get(key, everything).float()
            assert got.shape == ref.shape
            scale = ref.abs().max().item() if key == "patch_tokens" else 1.0
            assert (got - ref).abs().max().item() <= tol[dtype] * scale, (dtype, key)
        norms = store.get("image_emb", everything).float().norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=tol[dtype] * 4)


@torch.no_grad()
def test_replayed_views_equal_stored_ones(stores):
    bundle, split, by_dtype = stores
    store = by_dtype["float32"]
    idx = np.array([0, 3, 7, 15, 23])  # crosses shard boundaries (shard_size 7)
    boxes = store.get("view_boxes", idx)
    assert boxes.shape == (5, 2, 4) and torch.equal(boxes, sample_boxes(len(store), *split.images.shape[-2:], 2, FeatureParams(views=2))[idx])
    for k in range(2):
        views = replay_views(split.images[idx], boxes[:, k])
        emb = bundle.model.encode_image(preprocess_images(views, bundle.preprocess), normalize=True)
        assert torch.allclose(store.get("view_emb", idx)[:, k], emb, atol=1e-5)
    # views really are different crops of the image
    assert not torch.allclose(store.get("view_emb", idx)[:, 0], store.get("image_emb", idx), atol=1e-2)


def test_boxes_stay_inside_the_image_and_follow_the_scale_range():
    spec = FeatureParams(views=3, augment={"scale": [0.3, 0.6], "ratio": [0.5, 2.0]})
    boxes = sample_boxes(500, 40, 40, 3, spec).reshape(-1, 4).numpy()
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 40).all()
    assert len(np.unique(boxes, axis=0)) > 400
    # at 400 px rounding moves an area by < 1%, so every crop's area must lie in the configured
    # range (a box clipped to the image edge can only lose area); and the range is filled
    boxes = sample_boxes(2000, 400, 400, 2, spec).reshape(-1, 4).numpy().astype(float)
    h, w = boxes[:, 2], boxes[:, 3]
    area, clipped = h * w / 400**2, (h == 400) | (w == 400)
    assert clipped.mean() < 0.2
    assert (area <= 0.6 * 1.01).all() and (area[~clipped] >= 0.3 * 0.99).all(), (area.min(), area.max())
    assert np.quantile(area, 0.05) < 0.33 and np.quantile(area, 0.95) > 0.57
    ratio = (w / h)[~clipped]
    assert (ratio >= 0.5 * 0.98).all() and (ratio <= 2.0 * 1.02).all() and ratio.min() < 0.6 and ratio.max() > 1.7


def test_streaming_and_random_access_agree(stores):
    _, _, by_dtype = stores
    store = by_dtype["float16"]
    streamed = torch.cat([b["text_emb"] for b in store.iter_batches(6, ["text_emb"])])
    assert torch.equal(streamed, store.get("text_emb", np.arange(len(store))))
    perm = np.random.default_rng(0).permutation(len(store))
    assert torch.equal(store.get("text_emb", perm), streamed[perm])
    assert torch.equal(store.get("index", perm), torch.as_tensor(perm))
    with pytest.raises(IndexError):
        store.get("text_emb", [len(store)])


def test_manifest_describes_the_store(stores, teacher_dir):
    bundle, split, by_dtype = stores
    m = by_dtype["bfloat16"].manifest
    assert m["teacher"]["weights_sha256"] == bundle.manifest["weights_sha256"]
    assert m["dtype"] == "bfloat16" and m["count"] == len(split.images) and m["views"] == 2
    assert m["preprocess"] == bundle.preprocess and m["data"]["content_sha256"] == split.content_sha256
    assert m["patch_tokens"]["layer"] == len(bundle.model.visual.transformer.resblocks) - 2 == 0
    assert m["augment"] == {"scale": [0.5, 1.0], "ratio": [0.75, 1.3333]}
    assert m["tokenizer"]["kind"] == "word" and m["code_version"]
    assert m["logit_scale"] == pytest.approx(bundle.model.logit_scale.exp().item())
    assert [s["count"] for s in m["shards"]] == [7, 7, 7, 3]


def test_mismatched_store_is_refused(stores, world):
    bundle, split, by_dtype = stores
    store = by_dtype["float32"]
    store.check(data_sha256=split.content_sha256, preprocess=bundle.preprocess, image_size=list(split.images.shape[-2:]))
    other = load_split(world / "clip_eval")
    with pytest.raises(StoreMismatch, match=r"feature store does not match: data hash .* != stored"):
        store.check(data_sha256=other.content_sha256)
    with pytest.raises(StoreMismatch, match=r"preprocessing differs in \['mean'\]"):
        store.check(preprocess={**bundle.preprocess, "mean": [0.5, 0.5, 0.5]})
    with pytest.raises(StoreMismatch, match="not a feature store"):
        FeatureStore(world)


def test_store_without_options_is_lean(teacher_dir, world, tmp_path):
    bundle, split = load_model_dir(teacher_dir), load_split(world / "distill")
    extract(bundle, split, FeatureParams(patch_tokens=False, views=0), tmp_path / "lean")
    store = FeatureStore(tmp_path / "lean")
    assert store.keys == ["image_emb", "index", "text_emb"] and store.manifest["patch_tokens"] is None
