"""The worked example's data (configs/example-real.yaml, README "Your own data"): real photos in
real formats, built offline into a folder of your choice.

    python tests/helpers/real_example.py /tmp/clipdistill-example

writes, under that folder:

    images/COCO_val2014_{image_id:012d}.jpg   scikit-image's sample photos, COCO-style names and ids
    captions.json                             COCO captions (hand-written, two per photo)
    pairs.tsv                                 the same captions as an open_clip CSV (filepath, title)
    vqa_{train,eval}_{questions,annotations}.json   VQAv2 format, ten questions per photo, ten answers each
    teacher/vit-s-32-alt.safetensors          an open_clip ViT-S-32-alt, randomly initialised (no weights can
                                              be downloaded here; a real checkpoint drops in the same way;
                                              ViT-B-32 works alike, 4x the size and CPU time)

Deterministic: the same folder content on every call (JPEGs encoded by Pillow at a fixed quality).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# scikit-image sample photos shipped inside the wheel (no download), with COCO-style image ids
PHOTOS = {
    "astronaut": 42, "chelsea": 73, "coffee": 74, "rocket": 133,
    "camera": 136, "coins": 139, "hubble_deep_field": 143, "moon": 164,
}
TRAIN = ("astronaut", "chelsea", "coffee", "rocket", "camera")  # the rest is the evaluation set

CAPTIONS = {
    "astronaut": ["an astronaut in an orange suit smiles in front of a flag",
                  "a woman in a space suit holds her helmet"],
    "chelsea": ["an orange tabby cat looks to the side", "a ginger cat with green eyes"],
    "coffee": ["a white cup of coffee on a saucer with a spoon", "coffee in a cup on a table"],
    "rocket": ["a white rocket stands on the launch pad", "a space rocket ready for launch under a blue sky"],
    "camera": ["a man in a coat looks through a camera on a tripod", "a black and white photo of a photographer"],
    "coins": ["many old coins on a dark background", "a black and white photo of rows of coins"],
    "hubble_deep_field": ["hundreds of small galaxies in deep space", "a telescope image of distant galaxies"],
    "moon": ["the surface of the moon with craters", "a grey photo of lunar craters"],
}

# (question, question_type, answer_type); every photo is asked every question
QUESTIONS = [
    ("Is there a person in the picture?", "is there a", "yes/no"),
    ("Is there an animal in the picture?", "is there an", "yes/no"),
    ("Is this photo black and white?", "is this", "yes/no"),
    ("Is this a picture of space?", "is this a", "yes/no"),
    ("How many people are in the picture?", "how many", "number"),
    ("What is the main subject of the picture?", "what is the", "other"),
    ("What color is the main subject?", "what color is the", "other"),
    ("Is there something to eat or drink?", "is there", "yes/no"),
    ("Is this a vehicle?", "is this a", "yes/no"),
    ("Is the picture taken indoors?", "is the", "yes/no"),
]
# each photo's answers, in QUESTIONS order; "a|b": eight annotators said a, two said b
ANSWERS = {
    "astronaut": ["yes", "no", "no", "no", "1", "astronaut|woman", "orange|white", "no", "no", "yes"],
    "chelsea": ["no", "yes", "no", "no", "0", "cat", "orange|brown", "no", "no", "yes"],
    "coffee": ["no", "no", "no", "no", "0", "coffee|cup", "white", "yes", "no", "yes"],
    "rocket": ["no", "no", "no", "no", "0", "rocket", "white", "no", "yes", "no"],
    "camera": ["yes", "no", "yes", "no", "1", "man|camera", "black", "no", "no", "no"],
    "coins": ["no", "no", "yes", "no", "0", "coins", "gray|silver", "no", "no", "yes"],
    "hubble_deep_field": ["no", "no", "no", "yes", "0", "galaxies|stars", "black", "no", "no", "no"],
    "moon": ["no", "no", "yes", "yes", "0", "moon", "gray", "no", "no", "no"],
}
MAX_SIDE = 160  # photos are shrunk: the example runs at tiny image sizes anyway


def file_name(image_id: int) -> str:
    return f"COCO_val2014_{image_id:012d}.jpg"


def _photo(name: str) -> Image.Image:
    from skimage import data

    pixels = np.asarray(getattr(data, name)())
    if pixels.ndim == 2:  # grey photos (camera, coins, moon) are stored as RGB, as COCO's are
        pixels = np.stack([pixels] * 3, axis=-1)
    image = Image.fromarray(pixels[..., :3].astype(np.uint8))
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def _vqa(names) -> tuple[dict, dict]:
    questions, annotations = [], []
    for name in names:
        image_id = PHOTOS[name]
        for k, ((text, qtype, atype), answer) in enumerate(zip(QUESTIONS, ANSWERS[name], strict=True)):
            qid = image_id * 1000 + k  # VQAv2's own id scheme
            main, _, alt = answer.partition("|")
            given = [main] * 8 + [alt or main] * 2
            questions.append({"image_id": image_id, "question": text, "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "question_type": qtype,
                                "answer_type": atype, "multiple_choice_answer": main,
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                            for j, a in enumerate(given)]})
    info = {"data_subtype": "val2014", "license": {"name": "see scikit-image", "url": ""}}
    return ({**info, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions},
            {**info, "data_type": "mscoco", "annotations": annotations})


def save_random_vit(path: Path, arch: str = "ViT-S-32-alt", seed: int = 0) -> Path:
    """A randomly initialised open_clip `arch` as a safetensors checkpoint."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def build(root: Path, teacher: bool = True) -> Path:
    """Write the example under `root` (absolute); returns root."""
    root = Path(root).resolve()
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, image_id in PHOTOS.items():
        _photo(name).save(root / "images" / file_name(image_id), quality=90)
    coco = {"images": [{"id": i, "file_name": file_name(i)} for i in PHOTOS.values()],
            "annotations": [{"id": PHOTOS[n] * 10 + k, "image_id": PHOTOS[n], "caption": c}
                            for n, caps in CAPTIONS.items() for k, c in enumerate(caps)]}
    (root / "captions.json").write_text(json.dumps(coco, indent=1))
    rows = [f"{file_name(PHOTOS[n])}\t{c}" for n, caps in CAPTIONS.items() for c in caps]
    (root / "pairs.tsv").write_text("filepath\ttitle\n" + "\n".join(rows) + "\n")
    for split, names in (("train", TRAIN), ("eval", [n for n in PHOTOS if n not in TRAIN])):
        questions, annotations = _vqa(names)
        (root / f"vqa_{split}_questions.json").write_text(json.dumps(questions, indent=1))
        (root / f"vqa_{split}_annotations.json").write_text(json.dumps(annotations, indent=1))
    if teacher:
        save_random_vit(root / "teacher" / "vit-s-32-alt.safetensors")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/helpers/real_example.py OUT_DIR")
    print(build(Path(sys.argv[1])))
