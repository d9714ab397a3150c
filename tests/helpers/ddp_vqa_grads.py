"""One VQA stage-2 step on a fixed global batch of conversations with uneven answer lengths;
rank 0 saves loss and gradients. Run under `torchrun --nproc_per_node N`, or plainly."""

import sys

import torch

from clipdistill.training import parallel
from clipdistill.export.hf import to_hf
from clipdistill.models import ClipBundle, create_model
from clipdistill.models.clip import preprocess_cfg
from clipdistill.params import VQAParams
from clipdistill.vqa.language import tiny_llama
from clipdistill.vqa.model import build_vlm, num_image_tokens, train_tokenizer
from clipdistill.vqa.recipe import batch_loss, corpus, image_inputs

from reduce_and_save import reduce_and_save  # tests/helpers, the script's own folder

EXAMPLES = [(i, [("what colour is the circle ?", "dark red" if i % 2 else "red"),
                 ("how many shapes are there ?", " ".join(["two"] * (1 + i % 3)))][: 1 + i % 2])
            for i in range(8)]


def main(out: str) -> None:
    rank, world = parallel.init_from_env()
    tower = create_model("cd-student-xs", 0)
    bundle = ClipBundle(tower, None, "cd-student-xs", preprocess_cfg(tower), {"weights_sha256": None}, {})
    spec = VQAParams.model_validate({"lm": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2}})
    tok = train_tokenizer(corpus(EXAMPLES))
    vlm = build_vlm(to_hf(bundle)[0], tok, tiny_llama(spec, tok), spec)
    cfg = vlm.config
    features = torch.randn(len(EXAMPLES), cfg.image_seq_length, cfg.vision_config.hidden_size,
                           generator=torch.Generator().manual_seed(0))
    loss = batch_loss(vlm, tok, EXAMPLES, num_image_tokens(vlm), lambda idx: image_inputs(vlm, features[idx]))
    loss.backward()
    params = {k: p for k, p in vlm.named_parameters() if p.requires_grad}
    reduce_and_save(out, loss, params, rank, world, average=False)

if __name__ == "__main__":
    main(sys.argv[1])
