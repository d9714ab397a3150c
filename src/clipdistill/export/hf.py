"""`clipdistill export hf`: an open_clip vision tower as a Hugging Face `CLIPVisionModel`.

The directory holds `config.json` + `model.safetensors` (CLIPVisionModel) and
`preprocessor_config.json` (CLIPImageProcessor with the tower's own size, mean and std), so
LLaVA, TinyLLaVA and `LlavaForConditionalGeneration` can load it with `from_pretrained`.

Exact for plain class-token ViTs (open_clip's default tower): q/k/v are split from the
fused in-projection, GELU vs QuickGELU follows the open_clip config, layer-norm eps 1e-5.
Towers with attentional/average pooling, LayerScale or qk-norm are refused.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from clipdistill.io import ClipdistillError, atomic_dir, write_json
from clipdistill.models import ClipBundle


class ExportError(ClipdistillError):
    """The tower cannot be expressed as a CLIPVisionModel."""


def vision_config(bundle: ClipBundle) -> CLIPVisionConfig:
    cfg = bundle.config or open_clip.get_model_config(bundle.model_name)
    v = cfg["vision_cfg"]
    visual = bundle.model.visual
    for attr, why in (("attn_pool", "attentional pooling"), ("attn_pool_contrastive", "attentional pooling")):
        if getattr(visual, attr, None) is not None:
            raise ExportError(f"{bundle.model_name}: {why} has no CLIPVisionModel equivalent")
    if getattr(visual, "pool_type", "tok") != "tok" or v.get("ls_init_value") or v.get("qk_norm"):
        raise ExportError(f"{bundle.model_name}: only plain class-token ViTs export exactly")
    width, head_width = v["width"], v.get("head_width", 64)
    quick = cfg.get("quick_gelu", False)
    image_size = v["image_size"] if isinstance(v["image_size"], int) else v["image_size"][0]
    return CLIPVisionConfig(hidden_size=width, intermediate_size=int(width * v.get("mlp_ratio", 4.0)),
                            num_hidden_layers=v["layers"], num_attention_heads=width // head_width,
                            image_size=image_size, patch_size=v["patch_size"], projection_dim=cfg["embed_dim"],
                            hidden_act="quick_gelu" if quick else "gelu", layer_norm_eps=1e-5)


def convert_state_dict(visual) -> dict[str, torch.Tensor]:
    """open_clip VisionTransformer weights → CLIPVisionModel weights (transformers 5: no `vision_model.` prefix)."""
    sd = {"embeddings.patch_embedding.weight": visual.conv1.weight,
          "embeddings.class_embedding": visual.class_embedding,
          "embeddings.position_embedding.weight": visual.positional_embedding,
          "pre_layrnorm.weight": visual.ln_pre.weight, "pre_layrnorm.bias": visual.ln_pre.bias,
          "post_layernorm.weight": visual.ln_post.weight, "post_layernorm.bias": visual.ln_post.bias}
    for i, block in enumerate(visual.transformer.resblocks):
        pre = f"encoder.layers.{i}."
        for name, w, b in zip(("q", "k", "v"), block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)):
            sd[pre + f"self_attn.{name}_proj.weight"], sd[pre + f"self_attn.{name}_proj.bias"] = w, b
        sd.update({pre + "self_attn.out_proj.weight": block.attn.out_proj.weight,
                   pre + "self_attn.out_proj.bias": block.attn.out_proj.bias,
                   pre + "layer_norm1.weight": block.ln_1.weight, pre + "layer_norm1.bias": block.ln_1.bias,
                   pre + "layer_norm2.weight": block.ln_2.weight, pre + "layer_norm2.bias": block.ln_2.bias,
                   pre + "mlp.fc1.weight": block.mlp.c_fc.weight, pre + "mlp.fc1.bias": block.mlp.c_fc.bias,
                   pre + "mlp.fc2.weight": block.mlp.c_proj.weight, pre + "mlp.fc2.bias": block.mlp.c_proj.bias})
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def to_hf(bundle: ClipBundle) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    model = CLIPVisionModel(vision_config(bundle)).eval()
    missing, unexpected = model.load_state_dict(convert_state_dict(bundle.model.visual), strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ExportError(f"{bundle.model_name}: weight map incomplete (missing {missing[:3]}, unexpected {unexpected[:3]})")
    size = bundle.preprocess["size"][0]
    processor = CLIPImageProcessor(do_resize=True, size={"shortest_edge": size}, do_center_crop=True,
                                   crop_size={"height": size, "width": size}, resample=3,  # bicubic
                                   do_normalize=True, image_mean=list(bundle.preprocess["mean"]),
                                   image_std=list(bundle.preprocess["std"]), do_convert_rgb=True)
    return model, processor


def export_hf(bundle: ClipBundle, out: str | Path) -> dict:
    """Write the HF directory atomically; returns a small manifest."""
    model, processor = to_hf(bundle)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        manifest = {"source_model": bundle.model_name, "weights_sha256": bundle.manifest.get("weights_sha256"),
                    "hidden_size": model.config.hidden_size, "layers": model.config.num_hidden_layers,
                    "patches": (model.config.image_size // model.config.patch_size) ** 2}
        write_json(tmp / "clipdistill_export.json", manifest)
    return manifest
