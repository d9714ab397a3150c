"""open_clip model configs, model directories (safetensors + config + tokenizer), loading."""

from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).parent / "configs"
# Registers cd-teacher-*, cd-student-*, cd-vit-t-16 with open_clip's config mechanism, so
# `open_clip.create_model_and_transforms("cd-teacher-m", pretrained=".../model.safetensors")`
# works after `import clipdistill.models`.
open_clip.add_model_config(CONFIG_DIR)

from clipdistill.models.clip import (  # noqa: E402
    ClipBundle,
    create_model,
    load_external,
    load_model_dir,
    preprocess_images,
    resolve_pretrained,
    save_model_dir,
)

__all__ = ["ClipBundle", "create_model", "load_external", "load_model_dir", "preprocess_images",
           "resolve_pretrained", "save_model_dir", "CONFIG_DIR"]
