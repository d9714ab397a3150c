"""`clipdistill eval mieb`: a clipdistill / open_clip model directory as an mteb (MIEB) encoder,
scored on local tasks built from a split — zero-shot classification per label set and
image→text / text→image retrieval — the same data `clipdistill eval clip` scores.

Zero-shot uses the CLIP prompt-ensemble protocol, as `eval clip` does: a candidate label that
holds several prompts (one per line) is encoded prompt by prompt, L2-normalised, averaged and
re-normalised. MIEB's own tasks give one prompt per class and pass through unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipdistill.harness import HarnessError, offline, require

ENSEMBLE_SEP = "\n"  # captions and class prompts are one line each
SPLIT = "test"


def _mteb():
    offline()
    return require("mteb", "mteb")


def encoder(bundle, name: str, batch_size: int = 64):
    """The model as an mteb encoder: image and text towers, batched, with the model's own
    preprocessing and tokenizer; embeddings L2-normalised, cosine similarity."""
    mteb = _mteb()
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    from clipdistill.models import preprocess_images

    class ClipdistillEncoder(AbsEncoder):
        def __init__(self):
            self.model = bundle.model.eval()
            self.mteb_model_meta = ModelMeta.create_empty({
                "name": f"clipdistill/{name}", "revision": (bundle.manifest.get("weights_sha256") or "none")[:12],
                "modalities": ["image", "text"], "similarity_fn_name": ScoringFunction.COSINE,
                "framework": ["PyTorch"], "embed_dim": int(bundle.model.text_projection.shape[-1])
                if getattr(bundle.model, "text_projection", None) is not None else None})

        @torch.no_grad()
        def _texts(self, texts: list[str]) -> torch.Tensor:
            flat = [p for t in texts for p in t.split(ENSEMBLE_SEP)]
            emb = torch.cat([self.model.encode_text(bundle.tokenizer(flat[s:s + batch_size]), normalize=True).float()
                             for s in range(0, len(flat), batch_size)])
            out, at = [], 0
            for t in texts:  # prompt ensemble: mean of the normalised prompts, re-normalised
                n = len(t.split(ENSEMBLE_SEP))
                mean = emb[at:at + n].mean(0)
                out.append(mean / mean.norm())
                at += n
            return torch.stack(out)

        @torch.no_grad()
        def _images(self, images: list) -> torch.Tensor:
            u8 = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
                              for im in images])
            return self.model.encode_image(preprocess_images(u8, bundle.preprocess), normalize=True).float()

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs: Any):
            chunks = []
            for batch in inputs:
                has_img, has_txt = "image" in batch and batch["image"], "text" in batch and batch["text"]
                if has_img and has_txt:
                    raise HarnessError("fused image+text inputs are not supported (CLIP embeds one modality)")
                chunks.append(self._images(batch["image"]) if has_img else self._texts(batch["text"]))
            return torch.cat(chunks).numpy()

    del mteb
    return ClipdistillEncoder()


def _metadata(name: str, kind: str, category: str, modalities: list[str], main_score: str, description: str):
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(name=name, description=description, reference=None,
                        dataset={"path": "local", "revision": "local"}, type=kind, category=category,
                        eval_splits=[SPLIT], eval_langs=["eng-Latn"], main_score=main_score,
                        date=("2026-01-01", "2026-01-02"), domains=["Scene"], task_subtypes=[], license="not specified",
                        annotations_creators="derived", dialect=[], modalities=modalities, sample_creation="created",
                        bibtex_citation="")


def local_tasks(split, prefix: str = "Clipdistill") -> list:
    """mteb tasks over an in-memory split: one zero-shot task per label set (ambiguous images,
    label −1, left out, as `eval clip` does) and image→text / text→image retrieval with caption i
    relevant to image i only."""
    _mteb()
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.zeroshot_classification import AbsTaskZeroShotClassification
    from PIL import Image

    images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in split.images]
    tasks = []
    for set_name, ls in sorted(split.label_sets.items()):
        keep = [i for i, y in enumerate(ls["labels"]) if y >= 0]
        if not keep:
            continue
        labels = [ENSEMBLE_SEP.join(t.format(c) for t in ls["templates"]) for c in ls["classnames"]]

        class ZeroShot(AbsTaskZeroShotClassification):
            metadata = _metadata(f"{prefix}ZeroShot_{set_name}", "ZeroShotClassification", "i2t", ["image", "text"],
                                 "accuracy", f"zero-shot {set_name} on a local split (prompt ensembles)")
            _labels, _keep, _ls = labels, keep, ls

            def load_data(self, num_proc=None, **kwargs):
                self.dataset = DatasetDict({SPLIT: Dataset.from_dict(
                    {"image": [images[i] for i in self._keep], "label": [self._ls["labels"][i] for i in self._keep]})})
                self.data_loaded = True

            def get_candidate_labels(self) -> list[str]:
                return list(self._labels)

        tasks.append(ZeroShot())

    def retrieval(direction: str):
        i2t = direction == "i2t"
        queries = Dataset.from_dict({"id": [f"q{i}" for i in range(len(images))],
                                     **({"image": images} if i2t else {"text": list(split.captions)})})
        corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(len(images))],
                                    **({"text": list(split.captions)} if i2t else {"image": images})})
        qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(images))}

        class Retrieval(AbsTaskRetrieval):
            metadata = _metadata(f"{prefix}{direction.upper()}Retrieval", "Any2AnyRetrieval", direction,
                                 ["image", "text"], "recall_at_1",
                                 f"{'image→text' if i2t else 'text→image'} retrieval on a local split")

            def load_data(self, num_proc=None, **kwargs):
                self.dataset = {"default": {SPLIT: {"corpus": corpus, "queries": queries, "relevant_docs": qrels,
                                                    "top_ranked": None}}}
                self.data_loaded = True

        return Retrieval()

    return tasks + [retrieval("i2t"), retrieval("t2i")]


def run_mieb(model_dir: str | Path, split_dir: str | Path, out: str | Path | None = None,
             batch_size: int = 64) -> dict:
    """Score a model directory with mteb on the local tasks; returns (and writes) a summary."""
    mteb = _mteb()
    from clipdistill.data.splits import load_split
    from clipdistill.io import write_json
    from clipdistill.models import load_model_dir

    bundle = load_model_dir(model_dir)
    split = load_split(split_dir)  # as `eval clip` loads it: resizing is the model's own preprocessing
    model = encoder(bundle, Path(model_dir).name, batch_size)
    tasks = local_tasks(split)
    result = mteb.evaluate(model, tasks, cache=None, encode_kwargs={"batch_size": batch_size},
                           show_progress_bar=False)
    scores = {r.task_name: r.scores[SPLIT][0] for r in result.task_results}
    summary = {"harness": "mteb", "mteb_version": mteb.__version__, "model": str(model_dir), "split": str(split_dir),
               "zeroshot": {}, "retrieval": {}}
    for t in tasks:
        s, name = scores[t.metadata.name], t.metadata.name
        if t.metadata.type == "ZeroShotClassification":
            summary["zeroshot"][name.split("_", 1)[1]] = {"top1": s["accuracy"], "f1": s["f1"]}
        else:
            key = "image_to_text" if "I2T" in name else "text_to_image"
            summary["retrieval"][key] = {"R@1": s["recall_at_1"], "R@5": s["recall_at_5"], "ndcg@10": s["ndcg_at_10"]}
    if out is not None:
        write_json(out, summary)
    return summary
