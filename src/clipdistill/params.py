"""Typed params: one section per stage, validated with one-line errors, exported as JSON Schema.

`params.yaml` is the single source of truth for both runners. A stage loads only its own
section (`load_section`), which is exactly what dvc.yaml lists as its params.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator,
                      model_validator)

from clipdistill.io import ClipdistillError

STYLES = ("plain", "textured", "shifted_palette")
Style = Literal["plain", "textured", "shifted_palette"]
REQUIRED_SPLITS = ("pretrain", "distill", "clip_eval")  # the VQA splits are named by vqa.train_split / eval_splits


class ParamsError(ClipdistillError):
    """A params file or value is invalid."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitParams(Strict):
    """A split of the synthetic world (no `format` key)."""

    size: int = Field(ge=1, description="number of scenes (images) in the split")
    style: Style = Field("plain", description="rendering style / data source")
    hard_negatives: int = Field(1, ge=1, le=16, description="scenes per hard-negative group: a scene and k-1 "
                                "copies with one object's shape or cell changed, consecutive in the split "
                                "(teacher batches keep a group together); 1 = independent scenes")
    hard_negative_shape_rate: float = Field(0.5, ge=0.0, le=1.0, description="share of the hard negatives that "
                                            "change one object's shape; the others move one object to an empty "
                                            "cell (a full grid always changes a shape)")


IMAGE_PATTERN_FIELDS = ("image_id",)


class _Imported(Strict):
    """What every imported split shares: images read in place under a declared root, never copied."""

    image_root: str = Field(description="folder holding the images (absolute allowed); every image must "
                                        "resolve inside it, symlinks included")
    image_size: int = Field(224, ge=16, le=1024, description="images are resized (short side) and centre-cropped "
                                                            "to this many pixels when loaded")
    on_bad_sample: Literal["error", "skip"] = Field(
        "error", description="error: the first bad sample (for VQA formats: question) stops the import; "
                             "skip: drop it and count it")


def _known_pattern_fields(pattern: str) -> str:
    """An image pattern may name only IMAGE_PATTERN_FIELDS (a typo would fail on the first image)."""
    import string

    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
    except ValueError as exc:
        raise ValueError(f"malformed pattern {pattern!r}: {exc}") from None
    unknown = sorted(f for f in fields if f.split(".")[0].split("[")[0] not in IMAGE_PATTERN_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {pattern!r}; known: {', '.join(IMAGE_PATTERN_FIELDS)}")
    if not fields:
        raise ValueError(f"{pattern!r} names no field; use {{image_id}}")
    return pattern


class _VQAImport(_Imported):
    """A VQA split whose images are found from their ids through `image_pattern`."""

    _known_fields = field_validator("image_pattern", check_fields=False)(_known_pattern_fields)


class VQAv2SplitParams(_VQAImport):
    """A split imported from VQAv2 files (`questions` + `annotations` JSON)."""

    format: Literal["vqav2"]
    questions: str = Field(description="VQAv2 questions JSON (absolute, or relative to the project)")
    annotations: str = Field(description="VQAv2 annotations JSON: every question needs its `answers` "
                                         "(both training and scoring read them)")
    image_pattern: str = Field(description="an image's path under image_root from its id, Python format "
                                           "syntax, e.g. COCO_val2014_{image_id:012d}.jpg")


class GQASplitParams(_VQAImport):
    """A split imported from a GQA-style questions JSON ({question_id: {imageId, question, answer,
    types}}); the one answer stands for all ten annotators (soft accuracy = exact match)."""

    format: Literal["gqa"]
    questions: str = Field(description="the questions JSON (absolute, or relative to the project)")
    image_pattern: str = Field("{image_id}.jpg", description="an image's path under image_root from its id "
                                                             "(GQA's imageId)")


class LLaVASplitParams(_Imported):
    """VLM training conversations imported from LLaVA conversation JSON (LLaVA-Instruct's layout:
    a list of {id, image, conversations: [{from: human|gpt, value}, ...]}, `<image>` in the first
    human turn); each human→gpt pair is a question with its answer (question type `conversation`)."""

    format: Literal["llava"]
    path: str = Field(description="the conversation JSON (absolute, or relative to the project)")
    captions: Literal["none", "single_turn"] = Field(
        "none", description="none: no captions (stage 1 aligns on the conversations); single_turn: every "
                            "one-exchange conversation is also its image's caption for stage 1 and the LM's "
                            "reading pretraining (LLaVA-Pretrain's layout: a describe prompt, then the caption)")


class CSVSplitParams(_Imported):
    """Image–text pairs imported from an open_clip CSV; image paths relative to `image_root`
    (or absolute inside it)."""

    format: Literal["csv"]
    path: str = Field(description="the CSV file (absolute, or relative to the project)")
    img_key: str = Field("filepath", description="column of the image path")
    caption_key: str = Field("title", description="column of the caption")
    sep: str = Field("\t", min_length=1, max_length=1, description="column separator")


class COCOCaptionsSplitParams(_Imported):
    """Image–text pairs imported from a COCO `captions_*.json` (one pair per caption)."""

    format: Literal["coco_captions"]
    captions: str = Field(description="the captions JSON (absolute, or relative to the project)")


class WebdatasetSplitParams(Strict):
    """Image–text pairs imported from webdataset tar shards (`KEY.jpg|png` + `KEY.txt`, as the
    synthetic generator writes under `shards/`); read through the `webdataset` library."""

    format: Literal["webdataset"]
    shards: str = Field(description="folder of the .tar shards, read in name order (absolute, or relative to "
                                    "the project)")
    image_size: int = Field(224, ge=16, le=1024, description="images are resized (short side) and centre-cropped "
                                                            "to this many pixels when loaded")
    on_bad_sample: Literal["error", "skip"] = Field(
        "error", description="error: the first bad sample stops the import; skip: drop it and count it")


# which keys of an imported split name the files it reads (its DAG deps besides code)
SOURCE_KEYS = {"vqav2": ("questions", "annotations"), "gqa": ("questions",), "llava": ("path",), "csv": ("path",),
               "coco_captions": ("captions",), "webdataset": ("shards",)}
VQA_FORMATS = ("vqav2", "gqa")  # the VQA evaluation splits' formats (short answers to score)
VQA_TRAIN_FORMATS = (*VQA_FORMATS, "llava")  # what vqa.train_split may be imported from
PAIR_FORMATS = ("csv", "coco_captions", "webdataset")  # image–text splits (pretrain, features); vqav2 is for the VQA splits
SPLIT_TAGS = ("synthetic", *SOURCE_KEYS)


def _split_kind(entry) -> str:
    """`synthetic` without a `format` key, else the format (the union's tag)."""
    fmt = entry.get("format") if isinstance(entry, dict) else getattr(entry, "format", None)
    return fmt if fmt is not None else "synthetic"


AnySplit = Annotated[Union[Annotated[SplitParams, Tag("synthetic")], Annotated[VQAv2SplitParams, Tag("vqav2")],
                           Annotated[GQASplitParams, Tag("gqa")], Annotated[LLaVASplitParams, Tag("llava")],
                           Annotated[CSVSplitParams, Tag("csv")],
                           Annotated[COCOCaptionsSplitParams, Tag("coco_captions")],
                           Annotated[WebdatasetSplitParams, Tag("webdataset")]],
                     Discriminator(_split_kind, custom_error_type="split_format",
                                   custom_error_message="unknown split format; known: vqav2, gqa, llava, csv, "
                                                        "coco_captions, webdataset (or no format: synthetic)")]


def is_imported(entry) -> bool:
    return _split_kind(entry) != "synthetic"


def source_files(entry) -> list[str]:
    """The source files an imported split entry (model or raw params dict) names; [] if synthetic."""
    kind = _split_kind(entry)
    get = entry.get if isinstance(entry, dict) else lambda k: getattr(entry, k)
    return [str(get(k)) for k in SOURCE_KEYS.get(kind, ())]


def is_checkpoint_path(pretrained: str) -> bool:
    """A checkpoint path rather than an open_clip pretrained tag (tags have neither suffix nor
    separator); models/clip.py loads by the same rule."""
    return bool(Path(pretrained).suffix) or os.sep in pretrained


def teacher_files(entry) -> list[str]:
    """The local file or folder an external teacher entry (model or raw params dict) reads its
    weights from: `pretrained` when it is a checkpoint path, the folder of `local-dir:PATH`;
    [] for a pipeline teacher, a pretrained tag or hf-hub: (the HF cache is not tracked)."""
    get = entry.get if isinstance(entry, dict) else lambda k: getattr(entry, k, None)
    if get("source") != "external":
        return []
    arch, pretrained = str(get("arch") or ""), get("pretrained")
    if arch.startswith("local-dir:"):
        return [arch.removeprefix("local-dir:").strip()]
    return [str(pretrained)] if pretrained and is_checkpoint_path(str(pretrained)) else []


def lm_files(vqa) -> list[str]:
    """The local language-model folder `vqa.lm.path` names (model or raw dict), [] for the tiny Llama."""
    lm = (vqa or {}).get("lm") if isinstance(vqa, dict) else vqa.lm
    path = (lm or {}).get("path") if isinstance(lm, dict) or lm is None else lm.path
    return [str(path)] if path else []


class DataParams(Strict):
    """The data splits (`clipdistill data prepare`): the synthetic world's generator and every
    split, synthetic or imported."""

    seed: int = Field(0, ge=0, description="root seed; every split derives its own")
    image_size: int = Field(64, ge=16, le=1024, description="rendered image side, pixels")
    supersample: int = Field(4, ge=1, le=8, description="anti-aliasing factor")
    min_objects: int = Field(1, ge=1, le=9)
    max_objects: int = Field(4, ge=1, le=9)
    noise: float = Field(0.02, ge=0.0, le=0.5, description="pixel noise std (0..1 scale)")
    object_scale: float = Field(1.0, ge=0.5, le=1.15, description="× every object's radius (more pixels per object)")
    caption_position_rate: float = Field(0.3, ge=0.0, le=1.0, description="share of captions stating every "
                                                                          "object's cell")
    questions_per_image: int = Field(3, ge=1, le=20)
    position_color_ref_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of position questions that "
                                           "refer to the object by its colour alone ('the red object') where unique")
    annotator_synonym_rate: float = Field(0.3, ge=0.0, le=1.0)
    annotator_error_rate: float = Field(0.1, ge=0.0, le=1.0)
    shard_size: int = Field(1000, ge=1, description="samples per webdataset shard")
    splits: dict[str, AnySplit] = Field(
        default_factory=lambda: {
            "pretrain": SplitParams(size=4000),
            "distill": SplitParams(size=2000),
            "vqa_train": SplitParams(size=1500),
            "vqa_eval": SplitParams(size=300),
            "clip_eval": SplitParams(size=500),
        }
    )

    @model_validator(mode="after")
    def _check(self) -> "DataParams":
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        missing = [s for s in REQUIRED_SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"splits is missing {missing}; required: {list(REQUIRED_SPLITS)}")
        for name in self.splits:
            if not name.replace("_", "").isalnum() or not name.islower():
                raise ValueError(f"split name {name!r} must be lower-case letters, digits, '_'")
        return self


class TeacherParams(Strict):
    """One teacher (`clipdistill teacher train|import`)."""

    source: Literal["pipeline", "external"] = Field(
        "pipeline", description="pipeline: trained here on the synthetic world; external: open_clip weights")
    arch: str = Field(description="open_clip model name (cd-teacher-s|m|l, ViT-B-32, ...); external also "
                                  "hf-hub:ORG/NAME (from the local HF cache) or local-dir:PATH (a folder with "
                                  "open_clip_config.json + weights)")
    pretrained: str | None = Field(None, description="external only: open_clip pretrained tag (from the local HF "
                                                     "cache) or checkpoint path; unset for hf-hub: and local-dir:")
    epochs: int = Field(6, ge=1)
    samples: int | None = Field(None, ge=2, description="pipeline only: train on the first N pretrain samples "
                                                         "(the data axis); unset = the whole split")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0)
    local_weight: float = Field(0.0, ge=0, description="pipeline only: weight of the region–phrase term "
                                "(losses/region.py: each object's cell tokens vs its phrase); 0 = off, plain CLIP")
    local_layer: int = Field(-2, description="the block whose tokens the region–phrase term reads "
                             "(-2: the one the VLM reads; -1: the last)")
    local_phrase: Literal["object", "object_position", "shape"] = Field(
        "object", description="the region–phrase term's phrase of an object: object = \"a small red star\", "
                              "object_position = the same + its cell, shape = \"a star\" (the shape word alone)")
    local_logit_scale: float | None = Field(None, gt=0, description="the region–phrase term's fixed logit scale "
                                            "(1/temperature); unset = the CLIP term's learned one")

    @model_validator(mode="after")
    def _check(self) -> "TeacherParams":
        if self.source == "external" and self.local_weight > 0:
            raise ValueError("`local_weight` is for pipeline teachers (trained here on the synthetic world)")
        if self.source == "external" and self.samples is not None:
            raise ValueError("`samples` is for pipeline teachers (trained here); an external teacher has no pretrain split")
        schema = self.arch.startswith(("hf-hub:", "local-dir:"))
        if self.source == "external" and not self.pretrained and not schema:
            raise ValueError("an external teacher needs `pretrained` (a tag or a checkpoint path), or an arch "
                             "hf-hub:ORG/NAME or local-dir:PATH")
        if schema and (self.source != "external" or self.pretrained):
            raise ValueError(f"arch {self.arch!r} brings its own config and weights: it needs source: external "
                             "and no `pretrained`")
        if self.source == "pipeline" and self.pretrained:
            raise ValueError("a pipeline teacher is trained here; `pretrained` is for source: external")
        return self


class AugmentParams(Strict):
    """Random resized crops for the K stored views (boxes are stored and replayable)."""

    scale: tuple[float, float] = Field((0.5, 1.0), description="crop area fraction range")
    ratio: tuple[float, float] = Field((0.75, 1.3333), description="crop aspect ratio range")

    @model_validator(mode="after")
    def _check(self) -> "AugmentParams":
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {list(self.ratio)}")
        return self


class FeatureParams(Strict):
    """The teacher feature store (`clipdistill features extract`), one per teacher and
    distillation split (distill.grid.data)."""

    dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    patch_tokens: bool = Field(True, description="store penultimate-layer patch tokens (LLaVA's layer -2)")
    views: int = Field(0, ge=0, le=64, description="K augmented views per image")
    augment: AugmentParams = Field(default_factory=AugmentParams)
    batch_size: int = Field(256, ge=1)
    shard_size: int = Field(4096, ge=1, description="samples per safetensors shard")
    seed: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw):
        if isinstance(raw, dict) and "split" in raw:
            raise ValueError(f"`split` moved to distill.grid.data, the list of splits students distil on "
                             f"(e.g. data: [{raw['split']}])")
        return raw


class HarnessParams(Strict):
    """The standard harnesses as optional DAG stages: each names the splits it scores on, and an
    empty list leaves its stages out of both runners. Per harness, not one list of names: DVC
    templating cannot filter a list, so each harness's stages iterate over its own list."""

    lmms: list[str] = Field(description="VQAv2-format splits lmms-eval scores every VLM on (`clipdistill eval "
                                        "lmms`), e.g. [vqa_eval]; [] = off")
    mieb: list[str] = Field(description="splits mteb (MIEB) scores every teacher and student encoder on "
                                        "(`clipdistill eval mieb`), e.g. [clip_eval]; [] = off")

    @field_validator("lmms", "mieb", mode="after")
    @classmethod
    def _unique(cls, splits):
        if len(set(splits)) != len(splits):
            raise ValueError(f"a split is listed twice in {splits}")
        return splits


class EvalParams(Strict):
    """CLIP evaluation (`clipdistill eval clip`), and the optional harness stages."""

    split: str = Field("clip_eval", description="split with pairs.csv and labels.json")
    batch_size: int = Field(256, ge=1)
    recall_at: tuple[int, ...] = Field((1, 5, 10), min_length=1)
    harnesses: HarnessParams = Field(default_factory=lambda: HarnessParams(lmms=[], mieb=[]),
                                     description="optional stages scoring every model with lmms-eval / mteb; "
                                                 "both keys are needed by DVC's templating")


class LossOptions(Strict):
    """One term of a method. A bare number in params.yaml is shorthand for its weight."""

    weight: float = Field(1.0, ge=0)
    temperature: float | None = Field(None, gt=0, description="crd: KD temperature; affinity: one fixed τ for both "
                                      "models instead of each one's own logit scale (pre-#18 behaviour)")
    teacher_bias: float | None = Field(None, description="siglip_kd: bias of the teacher's sigmoid")

    def options(self) -> dict:
        return self.model_dump(exclude_none=True)


class StudentParams(Strict):
    arch: str = Field(description="open_clip model name (cd-student-xs|s, cd-vit-t-16, ...)")


class TrainParams(Strict):
    """Student training, shared by every run of the grid (same data and budget for all)."""

    epochs: int = Field(8, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    teacher_mode: Literal["store", "online"] = Field("store", description="feature store, or run the teacher per step")
    use_views: bool = Field(False, description="train on the store's augmented views (replayed crops)")
    mask_ratio: float = Field(0.75, ge=0, lt=1, description="mfd: fraction of patches dropped")
    checkpoint_every: int = Field(50, ge=1, description="steps between resumable checkpoints")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (the schedule spans them); "
                                                      "null: `epochs` full passes")


def _runners_need_levels(schema: dict) -> None:
    # the runners render paths from params.yaml alone (no defaults): an older file gets a schema
    # error naming the keys rather than a KeyError in the middle of the DAG
    schema["required"] = [*schema.get("required", []), "data", "durations"]


class GridParams(Strict):
    """The study grid: one KD run per (data, duration, teacher, student, method, seed), and one
    teacher-free baseline run per (data, duration, student, baseline, seed) — it does not depend
    on the teacher."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_runners_need_levels)

    teachers: list[str] = Field(min_length=1)
    students: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1, description="KD methods (use teacher targets)")
    baselines: list[str] = Field(min_length=1, description="methods without teacher terms, trained once")
    seeds: list[int] = Field(min_length=1)
    data: list[str] = Field(["distill"], min_length=1,
                            description="data splits students distil on (the teacher feature store is per teacher "
                                        "and split); the first is the reference level of the report's data effect")
    durations: list[int] = Field([1], min_length=1,
                                 description="training durations as multiples of distill.train.epochs (and "
                                             "max_steps); the first is the reference level")

    @field_validator("data", "durations", mode="after")
    @classmethod
    def _levels_once(cls, values, info):
        if repeated := sorted({v for v in values if values.count(v) > 1}):
            raise ValueError(f"level(s) {repeated} listed twice: each is one set of runs")
        if info.field_name == "durations" and (bad := [d for d in values if d < 1]):
            raise ValueError(f"durations {bad} must be ≥ 1 (multiples of distill.train.epochs)")
        return values


class DistillParams(Strict):
    """Distillation (`clipdistill distill`)."""

    students: dict[str, StudentParams] = Field(default_factory=dict)
    methods: dict[str, dict[str, Annotated[float, Field(ge=0)] | LossOptions]] = Field(
        default_factory=dict, description="name -> {loss: weight | {weight, temperature, ...}}")
    train: TrainParams = Field(default_factory=TrainParams)
    grid: GridParams | None = None

    @field_validator("methods", mode="after")
    @classmethod
    def _expand_weights(cls, methods):
        """A bare number is shorthand for {weight: number}. A method-level `weight` is its KD
        weight λ: it multiplies every term that uses the teacher (the CLIP term stays)."""
        from clipdistill.losses.registry import teacher_fields

        out = {}
        for name, terms in methods.items():
            terms = {loss: LossOptions(weight=o) if isinstance(o, (int, float)) else o for loss, o in terms.items()}
            if "weight" in terms:
                kd = terms.pop("weight").weight
                terms = {loss: o.model_copy(update={"weight": o.weight * kd})
                         if teacher_fields([loss]) else o
                         for loss, o in terms.items()}
            out[name] = terms
        return out

    @model_validator(mode="after")
    def _check(self) -> "DistillParams":
        from clipdistill.losses.registry import LOSSES, teacher_fields

        for name, method in self.methods.items():
            if not method:
                raise ValueError(f"method {name!r} has no loss terms")
            unknown = set(method) - set(LOSSES)
            if unknown:
                raise ValueError(f"method {name!r}: unknown loss(es) {sorted(unknown)}; known: {', '.join(LOSSES)}")
        if self.grid:
            for kind, known, names in (("students", self.students, self.grid.students),
                                       ("methods", self.methods, self.grid.methods),
                                       ("baselines", self.methods, self.grid.baselines)):
                missing = [x for x in names if x not in known]
                if missing:
                    raise ValueError(f"grid.{kind} names undefined {kind if kind != 'baselines' else 'methods'} {missing}")
            uses_teacher = {m: bool(teacher_fields(self.methods[m])) for m in self.methods}
            if kd := [m for m in self.grid.baselines if uses_teacher[m]]:
                raise ValueError(f"grid.baselines {kd} use teacher targets; list them under grid.methods")
            if free := [m for m in self.grid.methods if not uses_teacher[m]]:
                raise ValueError(f"grid.methods {free} use no teacher targets; list them under grid.baselines "
                                 "(trained once, not once per teacher)")
        return self


class LMParams(Strict):
    """The VLM's language model: a seeded tiny Llama, or a local HF causal LM (`path`)."""

    path: str | None = Field(None, description="local HF causal-LM directory (uses its own tokenizer, "
                                               "gains the <image> token)")
    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(256, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    max_length: int = Field(256, ge=16)
    seed: int = Field(0, ge=0)


class VQAStageParams(Strict):
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_samples: int | None = Field(None, ge=1, description="cap on training examples")


class LoRAParams(Strict):
    """Low-rank adapters (peft) on the LM's linear layers in stage 2, merged into the LM on save."""

    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="scaling numerator (update = alpha/r · B·A)")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"],
                               description="LM linear layers that get adapters")


class BlindParams(Strict):
    """The blind baseline's tower: it only ever sees a constant grey image."""

    arch: str = Field("cd-student-xs", description="open_clip model name of the (untrained) tower")
    seed: int = Field(0, ge=0, description="the tower's initial weights")


def _runners_need_splits(schema: dict) -> None:
    # the runners render paths from params.yaml alone (no defaults): an older file gets a schema
    # error naming the keys rather than a KeyError in the middle of the DAG
    schema["required"] = [*schema.get("required", []), "train_split", "eval_splits"]


class VQAParams(Strict):
    """LLaVA-style VQA (`clipdistill vqa run`): identical protocol for every encoder."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_runners_need_splits)

    lm: LMParams = Field(default_factory=LMParams)
    lm_pretrain: VQAStageParams | None = Field(
        None, description="instruction-tune the LM on text alone before any encoder sees it (each image's caption "
                          "in the image's place, then its VQA conversation), as LLaVA starts from an LM that "
                          "reads its context; shared by every VLM")
    stage1: VQAStageParams = Field(default_factory=lambda: VQAStageParams(epochs=1, lr=1e-3),
                                   description="projector alignment on captions (LM frozen)")
    stage2: VQAStageParams = Field(default_factory=lambda: VQAStageParams(epochs=3, lr=1e-3),
                                   description="instruction tuning on VQA (projector + LM)")
    lora: LoRAParams | None = Field(None, description="train LoRA adapters instead of the full LM in stage 2")
    blind: BlindParams = Field(default_factory=BlindParams, description="the blind baseline (`--encoder blind`)")
    standardize_features: bool = Field(
        True, description="standardise each tower feature dimension (mean and std over the training images' "
                          "tokens) before the projector, folded into the projector's first layer when training "
                          "ends: every encoder enters the projector at the same scale")
    train_split: str = Field("vqa_train", description="data split the VLMs (and the shared LM, its tokenizer) "
                                                       "train on: synthetic, vqav2, gqa or llava")
    eval_splits: list[str] = Field(
        default_factory=lambda: ["vqa_eval"], min_length=1, json_schema_extra={"uniqueItems": True},
        description="data splits every VLM is evaluated on, each scored on its own: the first is the study's "
                    "(results/vqa_metrics/..., the report's verdict), each further one writes under "
                    "results/vqa_sets/<split>/ (stage vqa_score_*)")
    eval_batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(6, ge=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 1], min_length=1, json_schema_extra={"uniqueItems": True},
        description="VLM seeds: every encoder gets one VLM per seed (its projector init and data order: "
                    "vqa/model.py projector_seed, vqa/train.py order_seeds), and the report's CIs include "
                    "the spread between VLMs; seed 0 is the VLM from before VLM seeds existed")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw):
        if isinstance(raw, dict) and "seed" in raw:
            raise ValueError("`seed` was replaced by `seeds`, a list of VLM seeds (e.g. seeds: [0, 1])")
        if isinstance(raw, dict) and "eval_split" in raw:
            raise ValueError("`eval_split` is `eval_splits`, a list whose first entry is the study's set "
                             f"(e.g. eval_splits: [{raw['eval_split']}])")
        return raw

    @field_validator("seeds", "eval_splits", mode="after")
    @classmethod
    def _listed_once(cls, values, info):
        if repeated := sorted({v for v in values if values.count(v) > 1}):
            raise ValueError({"seeds": f"repeated VLM seed(s) {repeated}: each seed is one VLM, list it once",
                              "eval_splits": f"split(s) {repeated} listed twice: each evaluation set is scored "
                                             "once"}[info.field_name])
        return values


class ReportParams(Strict):
    """The study report (`clipdistill report`)."""

    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for every CI")
    seed: int = Field(0, ge=0)
    equivalence_margin: float = Field(
        0.1, gt=0, description="largest slope (VQA points of KD gain per point of teacher zero-shot top-1 %) "
        "that counts as 'teacher quality does not matter': the verdict is `equivalent` only when the "
        "slope's 95% CI lies inside ±margin")


class RuntimeParams(Strict):
    """Where and how the model stages compute (`runtime`): teacher training, feature extraction,
    distillation, CLIP evaluation and VQA read it. It changes speed and rounding, not the
    recipe; the defaults leave CPU results bit-identical to a run without this section."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when present, else CPU; cuda refuses a machine without it "
                            "(under torchrun each rank takes the GPU LOCAL_RANK)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype of forward passes; weights, optimizer state and saved files stay "
                            "fp32 (fp16 adds a dynamic loss scale)")
    tf32: bool = Field(False, description="let CUDA fp32 matmuls and convolutions round through TF32")
    compile: bool = Field(False, description="torch.compile the open_clip towers (in place)")
    grad_checkpointing: bool = Field(False, description="recompute open_clip tower activations in the backward "
                                                        "pass (less memory for big teachers/students)")
    loss_backend: Literal["auto", "torch", "triton"] = Field(
        "auto", description="the losses' implementation: auto = the fused Triton kernels for CUDA tensors, chunked "
                            "torch otherwise; torch forces the PyTorch path (same meaning, same logged terms)")
    gpus: int = Field(1, ge=1, le=64, description="GPUs of one data-parallel stage (distill, vqa run): above 1 the "
                                                  "command relaunches itself under torchrun, one rank per GPU; "
                                                  "the other stages use one GPU (SLURM requests these counts)")
    in_memory_max_mb: int = Field(
        4096, ge=0, description="teacher training, feature extraction, distillation, CLIP evaluation and the VQA "
                                "stages hold a split's decoded uint8 images in RAM when they take at most this many "
                                "MiB; a bigger split is decoded lazily, by index, with bounded memory (same results, "
                                "byte for byte)")
    loader_workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes that decode a lazily "
                                                            "read split (0: decode in the stage's own process)")

    @model_validator(mode="after")
    def _check(self) -> "RuntimeParams":
        if self.gpus > 1 and self.device != "cuda":
            raise ValueError(f"gpus: {self.gpus} trains data-parallel on GPUs; it needs device: cuda")
        return self


class Params(Strict):
    """The whole params.yaml."""

    data: DataParams = Field(default_factory=DataParams)
    teachers: dict[str, TeacherParams] = Field(default_factory=dict)
    features: FeatureParams = Field(default_factory=FeatureParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    distill: DistillParams = Field(default_factory=DistillParams)
    vqa: VQAParams = Field(default_factory=VQAParams)
    report: ReportParams = Field(default_factory=ReportParams)
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)

    @model_validator(mode="after")
    def _check(self) -> "Params":
        if self.distill.grid:
            if "none" in self.teachers:
                raise ValueError("'none' is reserved (teacher-free baselines); rename that teacher")
            missing = [t for t in self.distill.grid.teachers if t not in self.teachers]
            if missing:
                raise ValueError(f"distill.grid.teachers names undefined teachers {missing}")
            if unknown := [s for s in self.distill.grid.data if s not in self.data.splits]:
                raise ValueError(f"distill.grid.data: {unknown} not data splits; known: {', '.join(self.data.splits)}")
        if self.eval.split not in self.data.splits:
            raise ValueError(f"split {self.eval.split!r} is not a data split")
        kinds = {name: _split_kind(e) for name, e in self.data.splits.items()}
        distilled = self.distill.grid.data if self.distill.grid else []
        for key, split in (("teacher training", "pretrain"), *(("distill.grid.data", s) for s in distilled)):
            if kinds[split] not in ("synthetic", *PAIR_FORMATS):
                raise ValueError(f"{key}: split {split!r} is imported from {kinds[split]} (questions, no image–text "
                                 f"pairs); it needs a synthetic split or one of {', '.join(PAIR_FORMATS)}")
        if kinds[self.eval.split] != "synthetic":  # zero-shot top-1 (the report's teacher quality) needs label sets
            raise ValueError(f"eval.split: split {self.eval.split!r} is imported ({kinds[self.eval.split]}); it needs "
                             "a synthetic split (its zero-shot label sets are the report's teacher quality)")
        vqa_splits = {"vqa.train_split": [self.vqa.train_split], "vqa.eval_splits": self.vqa.eval_splits}
        for key, splits in vqa_splits.items():
            if unknown := [s for s in splits if s not in kinds]:
                raise ValueError(f"{key}: {unknown} not data splits; known: {', '.join(kinds)}")
            formats = VQA_TRAIN_FORMATS if key == "vqa.train_split" else VQA_FORMATS
            for split in splits:
                if kinds[split] == "llava" and key == "vqa.eval_splits":
                    raise ValueError(f"{key}: split {split!r} is imported from llava (free-form conversations, "
                                     f"nothing to score); an evaluation set is synthetic or one of {', '.join(formats)}")
                if kinds[split] not in ("synthetic", *formats):
                    raise ValueError(f"{key}: split {split!r} is imported from {kinds[split]}; a VQA split is "
                                     f"synthetic or one of {', '.join(formats)}")
        if self.vqa.train_split in self.vqa.eval_splits:
            raise ValueError(f"vqa.eval_splits: {self.vqa.train_split!r} is vqa.train_split; a VLM is never scored "
                             "on the questions it trained on")
        for harness, splits in self.eval.harnesses:
            if unknown := [s for s in splits if s not in self.data.splits]:
                raise ValueError(f"eval.harnesses.{harness}: {unknown} not data splits; known: {', '.join(self.data.splits)}")
        return self


SECTIONS = {name: field.annotation for name, field in Params.model_fields.items()}


def _one_line(where: str, exc: ValidationError, prefix: tuple = ()) -> str:
    parts = []
    for err in exc.errors():
        keys = [str(x) for x in (*prefix, *err["loc"])]
        # a split entry's union tag (splits.NAME.vqav2.key) is not a key anyone wrote
        loc = ".".join(x for i, x in enumerate(keys) if not (i >= 2 and keys[i - 2] == "splits" and x in SPLIT_TAGS))
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}{shown}: {msg}" if loc else msg)  # a cross-field rule names its own keys
    return f"{where}: " + "; ".join(parts)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}{line}: malformed YAML") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def load_params(path: str | Path) -> Params:
    """Validate the whole file."""
    raw = _read_yaml(path)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_one_line(str(path), exc)) from None


def load_section(path: str | Path, section: str):
    """Validate and return one stage's section, ignoring the others."""
    if section not in SECTIONS:
        raise ParamsError(f"unknown params section {section!r}; known: {', '.join(SECTIONS)}")
    raw = _read_yaml(path).get(section, {})
    try:
        return TypeAdapter(SECTIONS[section]).validate_python(raw)
    except ValidationError as exc:
        raise ParamsError(_one_line(str(path), exc, prefix=(section,))) from None


def load_vqa_section(path: str | Path) -> "VQAParams":
    """The `vqa` section, its split names checked against the file's `data.splits` (names only:
    the VQA stages read no other data key), so a misspelt set fails before any work."""
    spec = load_section(path, "vqa")
    splits = (_read_yaml(path).get("data") or {}).get("splits")
    if isinstance(splits, dict):
        for key, names in (("vqa.train_split", [spec.train_split]), ("vqa.eval_splits", spec.eval_splits)):
            if unknown := [n for n in names if n not in splits]:
                raise ParamsError(f"{path}: {key}: {unknown} not data splits; known: {', '.join(splits)}")
    return spec


def pick(entries: dict, name: str, section: str):
    """The entry `name` of a named params mapping (teachers, students, methods), or a one-line error."""
    if name not in entries:
        raise ParamsError(f"no {name!r} in params `{section}`; defined: {', '.join(entries) or 'none'}")
    return entries[name]


def json_schema() -> dict:
    """The JSON Schema Snakemake validates params.yaml with (generated, never hand-edited)."""
    schema = Params.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
