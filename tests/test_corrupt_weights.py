"""A truncated or corrupt weights file gives one line naming the file and what is wrong
(ClipdistillError, exit status 2), never the safetensors library's traceback: model
directories, feature-store shards, external open_clip checkpoints, training checkpoints."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from clipdistill.data.splits import Split
from clipdistill.features.store import FeatureStore, extract
from clipdistill.io import ClipdistillError, safetensors_header
from clipdistill.models import load_external, load_model_dir
from clipdistill.models.clip import ModelError, create_model, default_tokenizer_spec, save_model_dir
from clipdistill.params import FeatureParams
from conftest import run_cli

ARCH = "cd-student-xs"


def truncate(path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    save_model_dir(out, create_model(ARCH, 0), ARCH, default_tokenizer_spec(ARCH), {"source": "test"})
    return out


@pytest.fixture
def broken_copy(model_dir, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    return out


@pytest.mark.parametrize("keep, match", [(-100, r"truncated safetensors file \(\d+ bytes, its header promises \d+\)"),
                                         (5, r"truncated safetensors file \(5 bytes: its header does not fit\)"),
                                         (0, r"truncated safetensors file \(0 bytes")])
def test_truncated_model_dir_names_the_file(broken_copy, keep, match):
    truncate(broken_copy / "model.safetensors", keep)
    with pytest.raises(ClipdistillError, match=rf"model\.safetensors: {match}"):
        load_model_dir(broken_copy)


def test_corrupt_header_and_flipped_weights_are_named(broken_copy):
    weights = broken_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    good = bytes(data)
    data[8] = 0xFF  # the first byte of the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(ClipdistillError, match=r"model\.safetensors: corrupt safetensors file \(its header is not JSON\)"):
        load_model_dir(broken_copy)
    data = bytearray(good)
    data[-3] ^= 0xFF  # one weight byte: the file is whole, the content is not
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"model\.safetensors: corrupt weights \(their sha256 differs"):
        load_model_dir(broken_copy)
    weights.write_bytes(good + b"\0" * 7)
    with pytest.raises(ClipdistillError, match=r"corrupt safetensors file \(7 bytes after the last tensor\)"):
        load_model_dir(broken_copy)
    weights.write_bytes(good)
    assert load_model_dir(broken_copy).model_name == ARCH


def test_cli_prints_one_line_and_exits_2(broken_copy, tmp_path):
    truncate(broken_copy / "model.safetensors", -1)
    proc = run_cli("eval", "clip", "--model", broken_copy, "--out", tmp_path / "metrics.json")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"clipdistill: error: {broken_copy / 'model.safetensors'}: truncated safetensors file "
                     f"({(broken_copy / 'model.safetensors').stat().st_size} bytes, its header promises "
                     f"{(broken_copy / 'model.safetensors').stat().st_size + 1})"], lines
    assert "Traceback" not in proc.stderr and not (tmp_path / "metrics.json").exists()


def test_truncated_external_checkpoint(model_dir, tmp_path):
    ext = tmp_path / "ext.safetensors"
    shutil.copy(model_dir / "model.safetensors", ext)
    truncate(ext, -10)
    with pytest.raises(ClipdistillError, match=r"ext\.safetensors: truncated safetensors file"):
        load_external(ARCH, str(ext))
    pt = tmp_path / "ext.pt"
    torch.save(load_model_dir(model_dir).model.state_dict(), pt)
    truncate(pt, 1000)
    with pytest.raises(ModelError, match=rf"ext\.pt: cannot load into {ARCH}: "):
        load_external(ARCH, str(pt))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"teachers": {"x": {"source": "external", "arch": ARCH,
                                                         "pretrained": str(ext)}}}))
    proc = run_cli("teacher", "train", "--params", params, "--name", "x", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        f"clipdistill: error: {ext}: truncated safetensors file"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_truncated_feature_store_shard(model_dir, tmp_path):
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=gen),
                  ["a red circle"] * 12, content_sha256="x", source="test")
    store = tmp_path / "store"
    extract(load_model_dir(model_dir), split, FeatureParams(shard_size=5, batch_size=4), store)
    assert len(FeatureStore(store)) == 12
    shard = store / "shard-000001.safetensors"
    good = shard.read_bytes()
    truncate(shard, -64)
    with pytest.raises(ClipdistillError, match=r"shard-000001\.safetensors: truncated safetensors file"):
        FeatureStore(store)
    shard.unlink()
    with pytest.raises(ClipdistillError, match=r"shard-000001\.safetensors: file not found"):
        FeatureStore(store)
    shutil.copy(store / "shard-000002.safetensors", shard)  # whole, but not the shard the manifest lists
    with pytest.raises(ClipdistillError, match=r"shard-000001\.safetensors: holds 2 rows, manifest.json says 5"):
        FeatureStore(store)
    shard.write_bytes(good)
    assert torch.equal(FeatureStore(store).get("index", [5, 9]), torch.tensor([5, 9]))


def test_truncated_training_checkpoint_says_how_to_restart(model_dir, tmp_path):
    from clipdistill.training.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / ".run.ckpt" / "last.safetensors"
    save_checkpoint(path, {"student": model}, opt, sched, 1, [{"step": 0}])
    assert load_checkpoint(path, {"student": torch.nn.Linear(3, 2)}, opt, sched) == (1, [{"step": 0}])
    truncate(path, -4)
    with pytest.raises(ClipdistillError, match=r"last\.safetensors: truncated .*; delete it to restart the run"):
        load_checkpoint(path, {"student": model}, opt, sched)
    header, start = safetensors_header(model_dir / "model.safetensors")
    assert start > 8 and "visual.conv1.weight" in header
