"""The teacher's region–phrase term (losses/region.py, `teachers.*.local_weight`): its value and
gradients against a float64 reference, the cells it pools are the VLM cell probe's, it is exactly
zero when a batch names one phrase, it reaches the block it is told to, and a split without object
boxes is refused in one line."""

import math

import pytest
import torch

from clipdistill.data.splits import load_split
from clipdistill.io import DataError, read_json
from clipdistill.losses.region import (batch_regions, cell_means, cell_of_patches, object_phrase,
                                       region_phrase_loss)
from clipdistill.models import create_model
from clipdistill.models.clip import word_tokenizer_for
from clipdistill.params import TeacherParams
from clipdistill.teachers import train as T
from clipdistill.vqa.diagnostics import cell_tokens


def reference_loss(tokens, head, image, cell, phrases, target, scale, image_px=63.0):
    """float64, one object at a time: a patch belongs to the cell its centre (in pixels) lies in."""
    side = math.isqrt(tokens.shape[1])
    patch_px, cell_px = image_px / side, image_px / 3
    total = 0.0
    for m in range(len(image)):
        row, col = divmod(int(cell[m]), 3)
        members = [tokens[int(image[m]), r * side + c] for r in range(side) for c in range(side)
                   if row * cell_px <= (r + 0.5) * patch_px < (row + 1) * cell_px
                   and col * cell_px <= (c + 0.5) * patch_px < (col + 1) * cell_px]
        region = head(sum(members) / len(members))
        sims = [scale * (region @ p) / (region.norm() * p.norm()) for p in phrases]
        total = total - (sims[int(target[m])] - torch.logsumexp(torch.stack(sims), 0))
    return total / len(image)


def test_region_term_matches_a_float64_reference_in_value_and_gradients():
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randn(3, 49, 5, generator=gen)  # 7×7 patches: cells of 2, 3 and 2 patch rows
    proj = torch.randn(5, 4, generator=gen)
    phrases = torch.randn(6, 4, generator=gen)
    scale = torch.tensor(7.3)
    image, cell = torch.tensor([0, 0, 1, 2, 2, 2, 1]), torch.tensor([0, 4, 8, 3, 5, 7, 1])
    target = torch.tensor([2, 0, 5, 1, 1, 3, 4])
    grad_out = torch.randn((), generator=gen)

    leaves = [t.clone().requires_grad_(True) for t in (tokens, proj, phrases, scale)]
    loss = region_phrase_loss(cell_means(leaves[0])[image, cell] @ leaves[1], leaves[2], target, leaves[3])
    (loss * grad_out).backward()

    ref_leaves = [t.double().clone().requires_grad_(True) for t in (tokens, proj, phrases, scale)]
    ref = reference_loss(ref_leaves[0], lambda x: x @ ref_leaves[1], image, cell, ref_leaves[2], target, ref_leaves[3])
    (ref * grad_out.double()).backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-6)


def test_region_pools_exactly_the_tokens_the_vlm_cell_probe_reads():
    feats = torch.randn(2, 64, 6, generator=torch.Generator().manual_seed(0))  # cd-teacher-m: 8×8 patches
    scenes = [[{"row": 0, "col": 2}, {"row": 1, "col": 1}], [{"row": 2, "col": 0}]]
    probe, _ = cell_tokens(feats, scenes)
    image, cell = torch.tensor([0, 0, 1]), torch.tensor([2, 4, 6])
    torch.testing.assert_close(cell_means(feats)[image, cell], probe)
    assert cell_of_patches(8).view(8, 8)[:, 0].tolist() == [0, 0, 0, 3, 3, 6, 6, 6]


def test_region_term_is_exactly_zero_when_every_object_has_the_same_phrase():
    """One distinct phrase: each region's softmax runs over one class, so −log 1 = 0 whatever
    the tokens, and nothing is pushed."""
    scene = [{"shape": "star", "color": "red", "size": "small", "row": r, "col": 1} for r in range(3)]
    image, cell, phrases, target = batch_regions([scene, scene[:1]])
    assert phrases == ["a small red star"] and target.tolist() == [0, 0, 0, 0]
    tokens = torch.randn(2, 64, 4, requires_grad=True)
    loss = region_phrase_loss(cell_means(tokens)[image, cell], torch.randn(1, 4), target, 10.0)
    loss.backward()
    assert loss.item() == 0.0 and not tokens.grad.any()


def test_batch_regions_share_a_target_between_equal_phrases():
    a = {"shape": "circle", "color": "orange", "size": "large", "row": 0, "col": 0}
    b = {**a, "shape": "star", "row": 1, "col": 1}
    image, cell, phrases, target = batch_regions([[a, b], [{**a, "row": 2}]], "object_position")
    assert phrases == ["a large orange circle on the top left", "a large orange star in the center",
                       "a large orange circle on the bottom left"]
    assert image.tolist() == [0, 0, 1] and cell.tolist() == [0, 4, 6] and target.tolist() == [0, 1, 2]
    _, _, phrases, target = batch_regions([[a, b], [{**a, "row": 2}]])
    assert phrases == ["a large orange circle", "a large orange star"] and target.tolist() == [0, 1, 0]
    assert object_phrase({**a, "size": "small"}) == "a small orange circle"
    _, _, phrases, target = batch_regions([[a, b], [{**a, "color": "red", "row": 2}]], "shape")
    assert phrases == ["a circle", "a star"] and target.tolist() == [0, 1, 0], "the shape word alone, any colour"
    assert object_phrase({**a, "shape": "hexagon"}, "shape") == "a hexagon"
    assert object_phrase({**a, "shape": "ring"}, "object") == "a large orange ring"
    with pytest.raises(ValueError, match="unknown phrase kind 'colour'"):
        object_phrase(a, "colour")


@pytest.mark.parametrize("layer, last_block_gets_grad", [(-2, False), (-1, True)])
def test_region_term_trains_the_block_it_reads(layer, last_block_gets_grad):
    model = create_model("cd-teacher-s", 0)
    tokenizer = word_tokenizer_for("cd-teacher-s")
    scenes = [[{"shape": s, "color": "red", "size": "large", "row": 1, "col": k}] for k, s in enumerate(
        ("star", "circle", "ring"))]
    size = model.visual.image_size
    pixels = torch.randn(3, 3, *(size if isinstance(size, tuple) else (size, size)))
    _, _, local = T.encode_with_regions(model, pixels, tokenizer(["a", "b", "c"]), scenes, tokenizer, layer)
    local.backward()
    blocks = model.visual.transformer.resblocks
    grad = lambda block: sum(p.grad.abs().sum() for p in block.parameters() if p.grad is not None)  # noqa: E731
    assert grad(blocks[-2]) > 0
    assert (grad(blocks[-1]) > 0) == last_block_gets_grad


def test_teacher_with_the_term_logs_both_parts_and_without_it_is_unchanged(world):
    split = load_split(world / "pretrain")
    scenes = read_json(world / "pretrain" / "scenes.json")
    plain = TeacherParams(arch="cd-teacher-s", epochs=1, batch_size=64, samples=256)
    _, _, log0 = T.train_teacher(plain, split, show_progress=False)
    _, _, log_scenes = T.train_teacher(plain, split, show_progress=False, scenes=scenes)
    assert log_scenes == log0, "scenes alone must not change a teacher trained without the term"
    local = plain.model_copy(update={"local_weight": 0.5})
    _, _, log1 = T.train_teacher(local, split, show_progress=False, scenes=scenes)
    assert set(log0[0]) == {"step", "epoch", "loss", "lr", "logit_scale"}
    assert log1[0]["clip_loss"] == pytest.approx(log0[0]["loss"], abs=1e-5), "same init and batch: same CLIP part"
    for row in log1:
        assert row["loss"] == pytest.approx(row["clip_loss"] + 0.5 * row["local_loss"], abs=1e-5)
    assert log1[-1]["loss"] != log0[-1]["loss"]


def test_a_split_without_object_boxes_is_refused_in_one_line(world):
    split = load_split(world / "pretrain")
    spec = TeacherParams(arch="cd-teacher-s", epochs=1, batch_size=64, local_weight=1.0)
    with pytest.raises(DataError, match=r"^teacher cd-teacher-s: local_weight needs each pretrain image's objects "
                                        r"\(scenes\.json\); the split .*pretrain has none$") as err:
        T.train_teacher(spec, split, show_progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="2 scenes for the 1200 pretrain pairs"):
        T.train_teacher(spec, split, show_progress=False, scenes=[[], []])
    with pytest.raises(ValueError, match="`local_weight` is for pipeline teachers"):
        TeacherParams(source="external", arch="cd-teacher-s", pretrained="x.pt", local_weight=1.0)


def test_a_fixed_local_logit_scale_replaces_the_learned_one_and_takes_no_gradient():
    model = create_model("cd-teacher-s", 0)
    tokenizer = word_tokenizer_for("cd-teacher-s")
    scenes = [[{"shape": s, "color": c, "size": "small", "row": 0, "col": 2}] for s, c in (("star", "red"),
                                                                                           ("ring", "blue"))]
    size = model.visual.image_size
    pixels = torch.randn(2, 3, *(size if isinstance(size, tuple) else (size, size)))
    text = tokenizer(["a", "b"])
    fixed = T.encode_with_regions(model, pixels, text, scenes, tokenizer, -2, logit_scale=55.0)[2]
    fixed.backward()
    assert model.logit_scale.grad is None
    with torch.no_grad():
        model.logit_scale.fill_(math.log(55.0))
    learned = T.encode_with_regions(model, pixels, text, scenes, tokenizer, -2)[2]
    assert fixed.item() == pytest.approx(learned.item(), rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(5.0))
    assert T.encode_with_regions(model, pixels, text, scenes, tokenizer, -2)[2].item() != \
        pytest.approx(fixed.item(), rel=1e-3)
    with pytest.raises(ValueError):
        TeacherParams(arch="cd-teacher-s", local_weight=1.0, local_logit_scale=0)


def test_the_teacher_stage_refuses_the_term_on_a_pretrain_split_without_scenes(world, tmp_path):
    import shutil

    from clipdistill.teachers import stage

    shutil.copytree(world / "pretrain", tmp_path / "data" / "pretrain", ignore=shutil.ignore_patterns("scenes.json"))
    teachers = {"t": TeacherParams(arch="cd-teacher-s", epochs=1, batch_size=64, local_weight=1.0)}
    with pytest.raises(DataError, match=r"^teacher cd-teacher-s: local_weight needs each pretrain image's objects "
                                        r"\(scenes\.json\); the split .*pretrain has none$"):
        stage.run(teachers, "t", tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cell_means_takes_any_square_grid_of_at_least_the_cells_in_float64_and_refuses_the_rest():
    tokens = torch.arange(9 * 2, dtype=torch.float64).reshape(1, 9, 2)  # 3×3 patches: one per cell
    assert torch.equal(cell_means(tokens), tokens)  # float64 in, float64 out, each cell its patch
    two = torch.randn(1, 16, 3, dtype=torch.float64)  # 4×4 patches on a 2×2 grid: quadrants of 4
    quadrant = two[0].reshape(2, 2, 2, 2, 3).permute(0, 2, 1, 3, 4).reshape(4, 4, 3).mean(1)
    torch.testing.assert_close(cell_means(two, grid=2)[0], quadrant, rtol=0, atol=1e-12)
    for count in (10, 4):  # not a square; a square smaller than the 3×3 grid
        with pytest.raises(ValueError, match=f"^{count} tokens are not a square patch grid of at least 3×3$"):
            cell_means(torch.zeros(2, count, 4))


def test_phrases_take_an_before_a_vowel_and_unknown_kinds_name_the_known_ones():
    obj = {"shape": "oval", "size": "small", "color": "red", "row": 0, "col": 0}
    assert object_phrase(obj, "shape") == "an oval"
    assert object_phrase({**obj, "shape": "star"}, "shape") == "a star"
    assert object_phrase({**obj, "size": "even"}, "object") == "an even red oval"
    with pytest.raises(ValueError, match=r"^unknown phrase kind 'colour'; one of object, object_position, shape$"):
        object_phrase(obj, "colour")


def test_batch_regions_indices_are_long_even_for_a_batch_without_objects():
    for scenes in ([[], []], [[{"shape": "star", "size": "small", "color": "red", "row": 2, "col": 1}]]):
        image, cell, phrases, target = batch_regions(scenes, "shape")
        assert image.dtype == cell.dtype == target.dtype == torch.long
        assert len(phrases) == len(target.unique())
