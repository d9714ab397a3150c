#!/usr/bin/env bash
# Issue 18 proxies, in the order run: one teacher per row of benchmarks/world_headroom.md,
# appended to benchmarks/world_headroom.csv. Default world (and `--dev`) only: never a held-out variant.
set -euo pipefail
cd "$(dirname "$0")/.."
P="nice -n 10 .venv/bin/python benchmarks/world_headroom.py"
$P --name untrained_probe_floor --epochs 1 --pretrain 256 --group 4 --data '{"caption_position_rate": 1, "position_color_ref_rate": 0.5}'
$P --name pos1_g4 --arch cd-teacher-m --epochs 6 --pretrain 2400 --group 4 --data '{"caption_position_rate": 1}'
$P --name legacy --arch cd-teacher-m --epochs 6 --pretrain 2400
$P --name pos1_g4_s115_long --arch cd-teacher-m --epochs 10 --pretrain 4000 --group 4 \
   --data '{"caption_position_rate": 1, "object_scale": 1.15}'
# 2026-12-07 (shape: what lets a tower read it). Ceilings (supervised, on cell crops / the tower's cell tokens):
P2="nice -n 10 .venv/bin/python benchmarks/shape_ceiling.py"
$P2 --name default --tower cd-teacher-m --tower-steps 300
# Budget: the same hard-negative world (default negatives: half change a shape, half move an object), 992 steps
$P --name pos1_g4_1000 --arch cd-teacher-m --epochs 32 --pretrain 4000 --group 4 --data '{"caption_position_rate": 1}'
# What the loss asks: every hard negative differs only in one object's shape (hard_negative_shape_rate 1)
$P --name pos1_g4_shape1_1000 --arch cd-teacher-m --epochs 32 --pretrain 4000 --group 4 --shape-rate 1 \
   --data '{"caption_position_rate": 1}'
# The supervised tower read-out with patch 4 (config cd-teacher-m-p4): does a finer patch help small objects?
$P2 --name default_p4_tower --skip-pixels --tower cd-teacher-m-p4 --tower-steps 300
# 2026-12-07 (b): the region–phrase term (teachers.*.local_weight; losses/region.py), shape-only negatives.
# Each row also probes the last block, the image embedding, the region embedding zero-shot and an MLP probe.
S="$P --arch cd-teacher-m --pretrain 4000 --group 4 --shape-rate 1 --data {\"caption_position_rate\":1}"
$S --name shape1_untrained_floor --epochs 1 --pretrain 128  # 1 step: the untrained tower under the new probes
$S --name shape1_local1_l2_300 --epochs 10 --local-weight 1 --local-layer -2
$S --name shape1_300 --epochs 10
$S --name shape1_local1_l1_300 --epochs 10 --local-weight 1 --local-layer -1
$S --name shape1_local4_l2_300 --epochs 10 --local-weight 4 --local-layer -2
$S --name shape1_local1_l2_s100_300 --epochs 10 --local-weight 1 --local-layer -2 --local-scale 100
$S --name shape1_local4_l2_shapeword_300 --epochs 10 --local-weight 4 --local-layer -2 --local-phrase shape
# (a) the 992-step shape-only-negatives teacher again, now with the last-block / embedding probes
$S --name shape1_1000_probes --epochs 32
$S --name shape1_local4_l2_shapeword_1000 --epochs 32 --local-weight 4 --local-layer -2 --local-phrase shape
# The first five 300-step rows ran before the MLP probe existed (the first two also before region_zs_shape): the
# mlp_shape_* of l1, local4 and s100 were measured afterwards on their saved teachers (--keep; same images, same
# mlp_shape_probe); the first two teachers were not kept (no value).
# The smaller budget for the shape-word term (620 steps)
$S --name shape1_local4_l2_shapeword_600 --epochs 20 --local-weight 4 --local-layer -2 --local-phrase shape
