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


# --- VLM directories: a LlavaProcessor and a chat template for AutoProcessor, pipelines, harnesses ---

# clipdistill's prompt format (vqa.model.encode_conversation) as a chat template:
#   <s>user : <image>… <prompt, lower-cased> assistant : <answer, lower-cased></s>user : …
# Images go first in the first user turn; words are separated by spaces because the
# study's word-level tokenizer splits on whitespace (subword tokenizers are not exact here:
# encode_conversation tokenizes each piece on its own).
CHAT_TEMPLATE = (
    "{%- if bos_token %}{{ bos_token }}{% endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{ 'user :' }}"
    "{%- if m['content'] is string -%}{{ ' ' + m['content'] | lower }}"
    "{%- else -%}"
    "{%- for c in m['content'] if c['type'] == 'image' %} <image>{% endfor -%}"
    "{%- for c in m['content'] if c['type'] == 'text' %} {{ c['text'] | lower }}{% endfor -%}"
    "{%- endif -%}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{ ' assistant : ' }}"
    "{%- if m['content'] is string -%}{{ m['content'] | lower }}"
    "{%- else -%}{%- for c in m['content'] if c['type'] == 'text' %}{{ c['text'] | lower }}{% endfor -%}"
    "{%- endif -%}"
    "{{ ' ' + eos_token + ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ ' assistant :' }}{% endif -%}"
)
PROCESSOR_FILE = "processor_config.json"


def vlm_model_dir(path: str | Path) -> Path:
    """The HF directory of a VLM: `vqa run`'s output folder (its `model/`) or the model folder itself."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    raise ExportError(f"{path}: not a VLM directory (no config.json, no model/config.json)")


def llava_processor(tokenizer, image_processor, config):
    """A LlavaProcessor that expands `<image>` into exactly the tokens the VLM was trained with."""
    from transformers import LlavaProcessor

    tower = config.vision_config
    proc = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=tower.patch_size,
                          vision_feature_select_strategy=config.vision_feature_select_strategy,
                          num_additional_image_tokens=1,  # the CLS token the tower adds (and "default" drops)
                          chat_template=CHAT_TEMPLATE, image_token="<image>")
    expected = (tower.image_size // tower.patch_size) ** 2
    if config.vision_feature_select_strategy == "full":
        expected += 1
    if expected != config.image_seq_length:
        raise ExportError(f"processor would insert {expected} image tokens, the VLM expects {config.image_seq_length}")
    return proc


def save_vlm_processor(model_dir: str | Path, tokenizer, image_processor, config) -> None:
    """Write the LlavaProcessor (tokenizer, image processor, chat template) next to the VLM."""
    llava_processor(tokenizer, image_processor, config).save_pretrained(model_dir)


def has_processor(model_dir: str | Path) -> bool:
    return (Path(model_dir) / PROCESSOR_FILE).is_file()


def upgrade_vlm_dir(path: str | Path) -> tuple[Path, bool]:
    """Give a VLM directory saved before processors existed its LlavaProcessor, in place.
    Returns (model dir, whether it was written)."""
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaConfig

    model_dir = vlm_model_dir(path)
    if has_processor(model_dir):
        return model_dir, False
    try:
        config = LlavaConfig.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        image_processor = CLIPImageProcessor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ExportError(f"{model_dir}: cannot build a processor ({str(e).splitlines()[0]})") from None
    save_vlm_processor(model_dir, tokenizer, image_processor, config)
    return model_dir, True
