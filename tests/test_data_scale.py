"""Scale: a split above `runtime.in_memory_max_mb` is decoded lazily by index and gives the
bytes of the in-RAM path (features, a short distillation); a killed feature extraction
resumes from its last complete shard and ends with the bytes of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipdistill.data.splits import LazyImages, batches, fits_in_memory, load_pairs
from clipdistill.distill.train import Teacher, distill
from clipdistill.features import store as S
from clipdistill.features.store import FeatureStore, StoreMismatch, extract
from clipdistill.models.clip import create_model, word_tokenizer_for
from clipdistill.params import FeatureParams, LossOptions, StudentParams, TeacherParams, TrainParams
from clipdistill.teachers.train import save_pipeline_teacher
from clipdistill.training.runtime import Runtime

WORDS = ["red", "green", "blue", "circle", "square", "triangle", "small", "large"]
LAZY = Runtime(in_memory_max_mb=0, loader_workers=2)  # every split read lazily, decoded in workers


def write_csv_dataset(root: Path, n: int, seed: int = 0) -> Path:
    """n noise images of mixed sizes and formats (non-square: the loader resizes and crops) + an
    open_clip CSV."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    lines = ["filepath\ttitle"]
    for i in range(n):
        h, w = int(rng.integers(24, 80)), int(rng.integers(24, 80))
        name = f"img/{i:05d}.{'jpg' if i % 3 == 0 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
        lines.append(f"{name}\ta {' '.join(rng.choice(WORDS, 3))}")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root / "pairs.csv"


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("scale") / "data", 45)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, csv_data):
    """An untrained cd-teacher-s saved as a pipeline teacher: equality tests need no skill."""
    spec = TeacherParams(arch="cd-teacher-s", epochs=1)
    out = tmp_path_factory.mktemp("scale") / "teacher"
    split = load_pairs(csv_data, 64)
    save_pipeline_teacher(out, "s", spec, split, create_model(spec.arch, 0), word_tokenizer_for(spec.arch), [])
    return out


def test_threshold_decides_between_ram_and_lazy(csv_data):
    assert fits_in_memory(10, 64, None) and fits_in_memory(1024, 64, 12) and not fits_in_memory(1025, 64, 12)
    assert isinstance(load_pairs(csv_data, 32, max_mb=1).images, torch.Tensor)  # 45 x 3 KiB: under 1 MiB
    assert isinstance(load_pairs(csv_data, 32, max_mb=0).images, LazyImages)


def test_lazy_rows_are_the_bytes_of_the_in_ram_tensor(csv_data):
    ram, lazy = load_pairs(csv_data, 32), load_pairs(csv_data, 32, max_mb=0)
    assert lazy.images.shape == ram.images.shape and lazy.captions == ram.captions
    assert torch.equal(lazy.images[:], ram.images)
    idx = torch.tensor([44, 3, 3, 17, 0])
    assert torch.equal(lazy.images[idx], ram.images[idx])
    assert torch.equal(lazy.images[5:9], ram.images[5:9]) and torch.equal(lazy.images[7], ram.images[7:8])
    # decoded ahead in two worker processes, in the order asked
    lists = [[4, 1], [30, 2, 44], [9]]
    for got, idx in zip(batches(lazy.images, lists, workers=2), lists, strict=True):
        assert torch.equal(got, ram.images[idx])
    # no size given: the first image's side, as the in-RAM path takes it
    assert load_pairs(csv_data, max_mb=0).images.shape == load_pairs(csv_data).images.shape


def test_lazy_features_are_the_bytes_of_the_in_ram_ones(csv_data, teacher, tmp_path):
    from clipdistill.models import load_model_dir

    spec = FeatureParams(views=2, shard_size=16, batch_size=6, dtype="float32")
    bundle = load_model_dir(teacher)
    extract(bundle, load_pairs(csv_data, 64), spec, tmp_path / "ram")
    extract(bundle, load_pairs(csv_data, 64, max_mb=0), spec, tmp_path / "lazy", LAZY)
    names = sorted(p.name for p in (tmp_path / "ram").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "lazy").iterdir())
    assert len([n for n in names if n.startswith("shard-")]) == 3
    for name in names:
        assert (tmp_path / "ram" / name).read_bytes() == (tmp_path / "lazy" / name).read_bytes(), name


@pytest.mark.parametrize("use_views", [False, True])
def test_short_lazy_distillation_gives_the_weights_of_the_in_ram_one(csv_data, teacher, tmp_path, use_views):
    from clipdistill.models import load_model_dir

    extract(load_model_dir(teacher), load_pairs(csv_data, 64), FeatureParams(views=2, shard_size=20), tmp_path / "f")
    method = {"clip": LossOptions(), "crd": LossOptions(), "fd": LossOptions(weight=100)}
    train = TrainParams(epochs=2, batch_size=16, max_steps=3, use_views=use_views, checkpoint_every=100)
    runs = []
    for split, rt in ((load_pairs(csv_data, 64), Runtime()), (load_pairs(csv_data, 64, max_mb=0), LAZY)):
        model, _, log = distill(StudentParams(arch="cd-student-xs"), method, train, 0, split,
                                Teacher(store=FeatureStore(tmp_path / "f")), show_progress=False, runtime=rt)
        runs.append((model.state_dict(), log))
    (ram, ram_log), (lazy, lazy_log) = runs
    assert len(ram_log) == 3 and ram_log == lazy_log  # max_steps caps the run (2 epochs would be 4 steps)
    assert ram.keys() == lazy.keys() and all(torch.equal(ram[k], lazy[k]) for k in ram)


CHILD = """
import sys, time
from clipdistill.data.splits import load_pairs
from clipdistill.features import store as S
from clipdistill.models import load_model_dir
from clipdistill.params import FeatureParams

save = S._save_shard
def save_then_hang(tensors, path):  # the parent kills this process once shard 2 is on disk
    save(tensors, path)
    if path.name == "shard-000002.safetensors":
        time.sleep(3600)
S._save_shard = save_then_hang
S.extract(load_model_dir(sys.argv[1]), load_pairs(sys.argv[2], 64, max_mb=0), FeatureParams(shard_size=8, batch_size=3),
          sys.argv[3])
"""


def test_killed_extraction_resumes_from_its_last_shard_to_the_same_bytes(csv_data, teacher, tmp_path, monkeypatch):
    from clipdistill.models import load_model_dir

    out, spec = tmp_path / "store", FeatureParams(shard_size=8, batch_size=3)
    partial = tmp_path / ".store.partial"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(teacher), str(csv_data), str(out)],
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (partial / "shard-000002.safetensors").is_file():
        assert child.poll() is None and time.monotonic() < deadline, "extraction ended before its third shard"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not out.exists() and not (partial / "manifest.json").exists()
    with pytest.raises(StoreMismatch, match="not a feature store"):
        FeatureStore(out)
    before = {p.name: p.stat().st_mtime_ns for p in partial.glob("shard-*")}
    assert sorted(before) == [f"shard-{k:06d}.safetensors" for k in range(3)]

    written = []
    save = S._save_shard
    monkeypatch.setattr(S, "_save_shard", lambda t, p: (written.append(p.name), save(t, p)))
    bundle = load_model_dir(teacher)
    extract(bundle, load_pairs(csv_data, 64), spec, out)
    assert written == [f"shard-{k:06d}.safetensors" for k in range(3, 6)]  # resumed after shard 2
    assert not partial.exists() and (out / "manifest.json").is_file()

    extract(bundle, load_pairs(csv_data, 64), spec, tmp_path / "whole")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "whole").iterdir())
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_leftovers_of_other_inputs_are_not_resumed(csv_data, teacher, tmp_path, monkeypatch):
    from clipdistill.models import load_model_dir

    bundle, split = load_model_dir(teacher), load_pairs(csv_data, 64)
    partial = tmp_path / ".store.partial"

    def fail_after_first(tensors, path, save=S._save_shard):
        save(tensors, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "_save_shard", fail_after_first)
    with pytest.raises(KeyboardInterrupt):
        extract(bundle, split, FeatureParams(shard_size=8, seed=1, views=1), tmp_path / "store")
    assert (partial / "shard-000000.safetensors").is_file()  # kept for a rerun with the same inputs
    monkeypatch.undo()
    extract(bundle, split, FeatureParams(shard_size=8, seed=2, views=1), tmp_path / "store")  # another seed
    extract(bundle, split, FeatureParams(shard_size=8, seed=2, views=1), tmp_path / "fresh")
    for name in sorted(p.name for p in (tmp_path / "fresh").iterdir()):
        assert (tmp_path / "store" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


def test_webdataset_split_streams_and_reads_by_index(tmp_path):
    """Shards as the synthetic generator writes them (png, txt, json), one bad sample skipped:
    the in-RAM split (streamed through `webdataset`) and the lazy one (byte ranges) agree."""
    import io

    from clipdistill.data.formats import write_shards
    from clipdistill.data.prepare import prepare
    from clipdistill.data.splits import _square, load_split
    from clipdistill.params import DataParams, WebdatasetSplitParams

    rng = np.random.default_rng(1)
    pictures, samples = [], []
    for i in range(11):
        pic = Image.fromarray(rng.integers(0, 256, (int(rng.integers(20, 50)), 40, 3), dtype=np.uint8))
        buf = io.BytesIO()
        pic.save(buf, format="PNG")
        sample = {"__key__": f"{i:06d}", "png": buf.getvalue(), "json": b"{}"}
        if i != 4:  # sample 4 has no caption: skipped
            sample["txt"] = f"a red circle {i}".encode()
            pictures.append(pic)
        samples.append(sample)
    write_shards(tmp_path / "shards", samples, shard_size=4)
    params = DataParams(splits={**DataParams().splits, "distill": WebdatasetSplitParams(
        format="webdataset", shards=str(tmp_path / "shards"), image_size=32, on_bad_sample="skip")})
    manifest = prepare(params, "distill", tmp_path / "data" / "distill")
    assert manifest["counts"] == {"images": 10, "pairs": 10, "skipped": 1}
    ram, lazy = load_split(tmp_path / "data" / "distill"), load_split(tmp_path / "data" / "distill", max_mb=0)
    assert isinstance(ram.images, torch.Tensor) and isinstance(lazy.images, LazyImages)
    expected = torch.from_numpy(np.stack([np.asarray(_square(p, 32)) for p in pictures])).permute(0, 3, 1, 2)
    assert torch.equal(ram.images, expected) and torch.equal(lazy.images[:], expected)
    assert ram.captions == lazy.captions == [f"a red circle {i}" for i in range(11) if i != 4]
    assert ram.content_sha256 == lazy.content_sha256 == manifest["content_sha256"]
