"""test_vqa's world: one object per scene at 64 px, and a pipeline teacher trained on it (40
epochs). With one object the caption's colour no longer tells scenes apart, so CLIP training has
to learn shape too (at this scale it does not on multi-object scenes: see the oracle-feature
test). Built in the background queue (tests/studies.py), or by hand:

    python tests/helpers/one_object_world.py OUT_DIR     # OUT_DIR/{pretrain,vqa_train,vqa_eval,teacher}
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's world and teacher helpers

import torch  # noqa: E402
from conftest import SMOKE, synth_world, train_small_teacher  # noqa: E402


def build(root: Path) -> Path:
    from clipdistill.params import SplitParams, load_section

    params = load_section(SMOKE, "data").model_copy(update={"image_size": 64, "max_objects": 1, "splits": {
        "pretrain": SplitParams(size=2000), "vqa_train": SplitParams(size=2000), "vqa_eval": SplitParams(size=200)}})
    synth_world(params, root)
    train_small_teacher(root / "pretrain", root / "teacher", epochs=40)
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/helpers/one_object_world.py OUT_DIR")
    torch.set_num_threads(1)  # it runs beside the foreground tests, one core each
    print(build(Path(sys.argv[1])))
