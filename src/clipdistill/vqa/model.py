"""The LLaVA-style VLM: an exported CLIP tower (frozen), an mlp2x_gelu projector, a language model.

`LlavaForConditionalGeneration` with layer −2 patch features, CLS dropped
(`vision_feature_select_strategy="default"`). The language model and its tokenizer come from
`vqa.language` (identical for every encoder).

Conversation (one image, one or more turns):
    <s> user : <image>×P <question or nothing> assistant : <answer> </s> user : <question> assistant : ...
Labels are −100 everywhere except each answer and its </s>.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (AutoTokenizer, CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration, PreTrainedModel,
                          PreTrainedTokenizerFast)

from clipdistill.params import VQAParams

IMAGE_TOKEN = "<image>"
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN]


def train_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the corpus (whitespace + punctuation split), no normalisation
    surprises: decode(encode(x)) gives the words back separated by spaces."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([c.lower() for c in corpus], trainers.WordLevelTrainer(special_tokens=SPECIALS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   clean_up_tokenization_spaces=False)
    fast.padding_side = "left"
    return fast


def projector_seed(spec: VQAParams, vlm_seed: int = 0) -> int:
    """The torch seed of VLM seed `vlm_seed`'s projector init: lm.seed + 1 + vlm_seed, so VLM
    seed 0 keeps the init every VLM had before VLM seeds existed. Torch's global stream goes on
    from it (LoRA init, dropout), so those follow the VLM seed too."""
    return spec.lm.seed + 1 + vlm_seed


def build_vlm(vision: str | Path | CLIPVisionModel, tokenizer, lm: PreTrainedModel,
              spec: VQAParams, vlm_seed: int = 0) -> LlavaForConditionalGeneration:
    """Assemble the VLM: frozen tower (an exported directory or the model itself), a fresh
    projector seeded from the VLM seed, a copy of the language model `lm` (see `vqa.language`)."""
    tower = vision if isinstance(vision, CLIPVisionModel) else CLIPVisionModel.from_pretrained(vision)
    tower.config._name_or_path = "vision_tower"  # not the (temporary) export path: saved bytes stay reproducible
    patches = (tower.config.image_size // tower.config.patch_size) ** 2
    cfg = LlavaConfig(vision_config=tower.config, text_config=lm.config,
                      image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu", image_seq_length=patches)
    torch.manual_seed(projector_seed(spec, vlm_seed))  # the projector: same init for every encoder of a given width
    vlm = LlavaForConditionalGeneration(cfg)
    vlm.model.vision_tower.load_state_dict(tower.state_dict())
    vlm.model.language_model.load_state_dict(lm.base_model.state_dict())
    vlm.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    vlm.model.vision_tower.requires_grad_(False)
    return vlm


def num_image_tokens(vlm) -> int:
    return vlm.config.image_seq_length


def encode_conversation(tokenizer, n_image: int, turns: list[tuple[str, str | None]], image: bool = True):
    """input ids and labels for a conversation of (prompt, answer) turns; the image tokens go
    into the first turn. A final answer of None leaves the prompt open for generation."""
    ids = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]  # some LMs (Qwen2) have no BOS
    labels = [-100] * len(ids)
    for k, (prompt, answer) in enumerate(turns):
        turn = tokenizer.encode("user :", add_special_tokens=False)
        if image and k == 0:
            turn += [tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)] * n_image
        turn += tokenizer.encode(prompt.lower(), add_special_tokens=False) if prompt else []
        turn += tokenizer.encode("assistant :", add_special_tokens=False)
        ids, labels = ids + turn, labels + [-100] * len(turn)
        if answer is not None:
            target = tokenizer.encode(answer.lower(), add_special_tokens=False) + [tokenizer.eos_token_id]
            ids, labels = ids + target, labels + target
    return ids, labels


def encode_example(tokenizer, n_image: int, prompt: str, answer: str | None, image: bool = True):
    """One turn: input ids, and labels on the answer when it is given (else None)."""
    ids, labels = encode_conversation(tokenizer, n_image, [(prompt, answer)], image)
    return ids, labels if answer is not None else None


def collate(batch: list[tuple[list[int], list[int] | None]], pad_id: int, left: bool):
    """Pad to a rectangle; left padding for generation, right for training."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        sl = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[i, sl] = torch.tensor(ids)
        attention[i, sl] = 1
        if lab is not None:
            labels[i, sl] = torch.tensor(lab)
    return input_ids, attention, labels


def load_vlm(path: str | Path):
    vlm = LlavaForConditionalGeneration.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return vlm, tok
