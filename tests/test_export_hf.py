"""open_clip → Hugging Face CLIPVisionModel: every hidden state and the pooled output match."""

import pytest
import torch
from transformers import CLIPImageProcessor, CLIPVisionModel

from clipdistill.export.hf import ExportError, export_hf
from clipdistill.models import ClipBundle, create_model, load_model_dir, preprocess_images
from clipdistill.models.clip import preprocess_cfg


def random_bundle(arch, quick_gelu=False):
    import open_clip

    if quick_gelu:
        cfg = {**open_clip.get_model_config(arch), "quick_gelu": True}
        open_clip.factory._MODEL_CONFIGS[f"{arch}-quickgelu-test"] = cfg
        arch = f"{arch}-quickgelu-test"
    model = create_model(arch, seed=1).eval()
    return ClipBundle(model, None, arch, preprocess_cfg(model), {"weights_sha256": "x"}, {})


@pytest.mark.parametrize("arch, quick", [("cd-teacher-m", False), ("cd-student-xs", False), ("cd-teacher-s", True)])
@torch.no_grad()
def test_every_layer_matches_open_clip(tmp_path, arch, quick):
    bundle = random_bundle(arch, quick)
    export_hf(bundle, tmp_path / "hf")
    hf = CLIPVisionModel.from_pretrained(tmp_path / "hf").eval()
    x = preprocess_images(torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8), bundle.preprocess)
    out = hf(pixel_values=x, output_hidden_states=True)
    visual = bundle.model.visual
    layers = len(visual.transformer.resblocks)
    ref = visual.forward_intermediates(x, indices=list(range(layers)), output_fmt="NLC", output_extra_tokens=True)
    for i in range(layers):  # HF hidden_states[i + 1] is the output of block i, CLS included
        ours = torch.cat([ref["image_intermediates_prefix"][i], ref["image_intermediates"][i]], dim=1)
        assert (out.hidden_states[i + 1] - ours).abs().max() < 1e-5, f"block {i}"
    pooled = visual.ln_post(out.hidden_states[-1][:, 0])
    assert (out.pooler_output - pooled).abs().max() < 1e-5
    assert (out.pooler_output @ visual.proj - visual(x)).abs().max() < 1e-5
    assert hf.config.hidden_act == ("quick_gelu" if quick else "gelu")


def test_processor_carries_the_towers_preprocessing(tmp_path, teacher_dir):
    bundle = load_model_dir(teacher_dir)
    export_hf(bundle, tmp_path / "hf")
    proc = CLIPImageProcessor.from_pretrained(tmp_path / "hf")
    assert proc.crop_size == {"height": 64, "width": 64} and list(proc.image_mean) == bundle.preprocess["mean"]


def test_non_plain_towers_are_refused():
    bundle = random_bundle("cd-student-xs")
    bundle.model.visual.pool_type = "avg"
    with pytest.raises(ExportError, match="only plain class-token ViTs"):
        export_hf(bundle, "/nonexistent/never-written")
