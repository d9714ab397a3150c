"""CKA and the CLIP evaluation on toy inputs whose answers are worked out by hand: these
numbers are the study's x-axis, so they are checked against arithmetic, not against
another run of the same code."""

import math

import pytest
import torch

from clipdistill.data.splits import Split
from clipdistill.evaluate.cka import linear_cka
from clipdistill.evaluate.clip_eval import evaluate_clip, recall_at_k
from clipdistill.models import ClipBundle
from clipdistill.params import EvalParams


def test_cka_of_hand_worked_matrices():
    x = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])  # already centred
    # XᵀX = 2·I (‖·‖_F = 2√2); Y = first column: YᵀY = [2], YᵀX = [2, 0] → 4 / (2√2 · 2) = 1/√2
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    # invariant to rotation, isotropic scaling and translation
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    assert linear_cka(x, 3 * x @ rot + 7) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x[:, :1] + 5, x) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    # each column is centred on its own mean (not the matrix's): offsets per column change nothing
    offsets = torch.tensor([3.0, -5.0])
    assert linear_cka(x + offsets, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert linear_cka(x[:, :1], x + offsets) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    # orthogonal features: (1,-1,1,-1) against (1,1,-1,-1) share nothing
    a, b = torch.tensor([[1.0], [-1], [1], [-1]]), torch.tensor([[1.0], [1], [-1], [-1]])
    assert linear_cka(a, b) == pytest.approx(0.0, abs=1e-12)
    # not invariant to anisotropic scaling: X·diag(1, 2) against X[:, :1]: XᵀX = diag(2, 8) (‖·‖ = √68),
    # YᵀX = [2, 0] → 4 / (√68 · 2) = 2/√68
    assert linear_cka(x * torch.tensor([1.0, 2.0]), x[:, :1]) == pytest.approx(2 / math.sqrt(68), abs=1e-12)
    with pytest.raises(ValueError, match="sample counts differ: 4 vs 3"):
        linear_cka(x, x[:3])


def test_recall_counts_strictly_higher_candidates():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.3, 0.6, 0.4]])
    # rows (image→text): ranks 0, 0, 1; columns (text→image): ranks 0, 0, 2
    assert recall_at_k(sim, (1, 2)) == pytest.approx({"R@1": 2 / 3, "R@2": 1.0})
    assert recall_at_k(sim.T, (1, 2, 3)) == pytest.approx({"R@1": 2 / 3, "R@2": 2 / 3, "R@3": 1.0})
    tie = torch.tensor([[0.5, 0.5], [0.0, 1.0]])  # a tie with the match is not counted against it
    assert recall_at_k(tie, (1,))["R@1"] == 1.0


class ToyModel(torch.nn.Module):
    """encode_image reads the image's index from its first pixel; encode_text looks prompts up."""

    def __init__(self, image_emb, text_emb: dict):
        super().__init__()
        self.image_emb, self.text_emb = image_emb, text_emb
        self.names = list(text_emb)

    def encode_image(self, x, normalize=False):
        return self.image_emb[(x[:, 0, 0, 0] * 255).round().long()]

    def encode_text(self, tokens, normalize=False):
        return torch.stack([self.text_emb[self.names[i]] for i in tokens.tolist()])


def test_zero_shot_and_retrieval_on_a_toy_model():
    images = torch.eye(3)  # image i → e_i, so sim[i, j] is caption j's i-th coordinate
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.3, 0.6, 0.4]])
    text = {f"c{j}": sim[:, j] for j in range(3)}
    text.update({"a red thing": torch.tensor([1.0, 0, 0]), "one red": torch.tensor([0.0, 1, 0]),
                 "a blue thing": torch.tensor([0.0, 0.6, 0.8]), "one blue": torch.tensor([0.0, 0, 1])})
    model = ToyModel(images, text)
    bundle = ClipBundle(model, lambda texts: torch.tensor([model.names.index(t) for t in texts]), "toy",
                        {"size": [2, 2], "mean": [0.0] * 3, "std": [1.0] * 3, "interpolation": "bicubic"}, {}, {})
    pixels = torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 2, 2).contiguous()
    classes = {"classnames": ["red", "blue"], "templates": ["a {} thing", "one {}"]}
    # the unlabelled set comes first: it is skipped, and the sets after it are still scored
    split = Split(pixels, ["c0", "c1", "c2"], {"unlabelled": {**classes, "labels": [-1, -1, -1]},
                                               "colour": {**classes, "labels": [0, 1, 1]},
                                               "ambiguous": {**classes, "labels": [0, -1, 1]}})
    m = evaluate_clip(bundle, split, EvalParams(recall_at=(1, 2)))
    assert m["count"] == 3
    assert m["retrieval"]["image_to_text"] == pytest.approx({"R@1": 2 / 3, "R@2": 1.0}, abs=1e-6)
    assert m["retrieval"]["text_to_image"] == pytest.approx({"R@1": 2 / 3, "R@2": 2 / 3}, abs=1e-6)
    # class vectors: red = (1, 1, 0)/√2; blue = mean((0, .6, .8), (0, 0, 1)) = (0, .3, .9) → (0, .316, .949).
    # e0 → red (.707 vs 0), e1 → red (.707 vs .316), e2 → blue (0 vs .949): predictions red, red, blue
    # (the first template alone would call e1 blue: 0 vs .6, so the ensemble is what is tested)
    assert m["zeroshot"]["colour"] == pytest.approx({"top1": 2 / 3, "chance": 0.5, "majority": 2 / 3, "count": 3},
                                                    abs=1e-6)
    # the ambiguous image (label −1) is left out: e0 → red ✓, e2 → blue ✓
    assert m["zeroshot"]["ambiguous"] == pytest.approx({"top1": 1.0, "chance": 0.5, "majority": 0.5, "count": 2},
                                                       abs=1e-6)
    assert "unlabelled" not in m["zeroshot"]
    assert m["summary"] == pytest.approx({"retrieval_mean_R@1": 2 / 3, "zeroshot_mean_top1": (2 / 3 + 1) / 2},
                                         abs=1e-6)


def test_alignment_of_a_model_with_itself_is_one_and_batching_changes_nothing():
    """CKA of a model to itself is 1 on every representation (image, text, patch tokens); to
    another model it is below 1; and the batch size of the encoding does not matter."""
    from clipdistill.models.clip import create_model, default_tokenizer_spec, preprocess_cfg, tokenizer_from_spec

    def bundle(arch, seed):
        model, spec = create_model(arch, seed).eval(), default_tokenizer_spec(arch)
        return ClipBundle(model, tokenizer_from_spec(spec), arch, preprocess_cfg(model), {}, spec)

    teacher, student = bundle("cd-teacher-s", 0), bundle("cd-student-xs", 1)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 64, 64), generator=gen, dtype=torch.uint8)
    captions = ["a red circle", "a blue square", "a green triangle", "two red squares", "a small blue circle",
                "a large green square", "three circles"]
    split = Split(images, captions)
    same = evaluate_clip(teacher, split, EvalParams(batch_size=3, recall_at=(1,)), teacher)
    assert same["cka"] == pytest.approx({"image": 1.0, "text": 1.0, "patch_tokens": 1.0}, abs=1e-5)
    assert same["summary"]["cka_image"] == pytest.approx(1.0, abs=1e-5)
    other = [evaluate_clip(student, split, EvalParams(batch_size=b, recall_at=(1,)), teacher) for b in (2, 7)]
    assert all(0 < v < 0.999 for v in other[0]["cka"].values()), other[0]["cka"]
    assert other[0]["cka"] == pytest.approx(other[1]["cka"], abs=1e-5)
    assert other[0]["retrieval"] == other[1]["retrieval"]  # rounded to 6 digits by evaluate_clip


def test_every_forward_pass_runs_on_the_runtime_it_is_given():
    """evaluate_clip hands its runtime to every encoder call (student and teacher embeddings,
    both models' patch tokens, the zero-shot prompts), so a GPU or bf16 runtime reaches them all;
    both towers are prepared for inference (train=False)."""
    from dataclasses import dataclass, field

    from clipdistill.models.clip import create_model, default_tokenizer_spec, preprocess_cfg, tokenizer_from_spec
    from clipdistill.training.runtime import Runtime

    @dataclass(frozen=True)
    class RecordingRuntime(Runtime):
        forwards: list = field(default_factory=list)
        towers_train: list = field(default_factory=list)

        def autocast(self):
            self.forwards.append("autocast")
            return super().autocast()

        def towers(self, model, *, train):
            self.towers_train.append(train)
            return super().towers(model, train=train)

    def bundle(arch, seed):
        model, spec = create_model(arch, seed).eval(), default_tokenizer_spec(arch)
        return ClipBundle(model, tokenizer_from_spec(spec), arch, preprocess_cfg(model), {}, spec)

    images = torch.randint(0, 256, (5, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    classes = {"classnames": ["red", "blue", "green"], "templates": ["a {} thing", "one {}"], "labels": [0, 1, 2, 0, 1]}
    split = Split(images, ["a red circle", "a blue square", "a green ring", "two red", "one blue"], {"colour": classes})
    runtime = RecordingRuntime()
    evaluate_clip(bundle("cd-student-xs", 1), split, EvalParams(batch_size=2, recall_at=(1,)), bundle("cd-teacher-s", 0),
                  runtime)
    # 5 images in batches of 2 → 3 batches for each of: student encode, teacher encode, student and
    # teacher patch tokens (4 × 3), plus one prompt set per class (3)
    assert len(runtime.forwards) == 4 * 3 + 3
    assert runtime.towers_train == [False, False]


def test_patch_tokens_are_the_output_of_the_block_asked_for():
    """`layer` counts blocks from the end when negative (default −2, what the VLM reads) and from
    the start otherwise; the reference is each block's output caught by a forward hook, CLS dropped."""
    from clipdistill.evaluate.clip_eval import patch_tokens
    from clipdistill.models.clip import create_model, default_tokenizer_spec, preprocess_cfg, tokenizer_from_spec

    model, spec = create_model("cd-student-d4", 0).eval(), default_tokenizer_spec("cd-student-d4")
    bundle = ClipBundle(model, tokenizer_from_spec(spec), "cd-student-d4", preprocess_cfg(model), {}, spec)
    blocks = model.visual.transformer.resblocks
    caught = {}
    for k, block in enumerate(blocks):
        block.register_forward_hook(lambda _m, _i, out, k=k: caught.__setitem__(k, out[:, 1:].detach().clone()))
    images = torch.randint(0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    split = Split(images, ["a", "b", "c"])
    default = patch_tokens(bundle, split, 8)
    for layer, block in ((-2, len(blocks) - 2), (-1, len(blocks) - 1), (0, 0), (1, 1)):
        caught.clear()
        tokens = patch_tokens(bundle, split, 8, layer=layer)
        assert caught, "the hooks saw no forward pass"
        torch.testing.assert_close(tokens, caught[block], rtol=0, atol=0)
    torch.testing.assert_close(default, patch_tokens(bundle, split, 8, layer=-2), rtol=0, atol=0)
