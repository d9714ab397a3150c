"""Training tools shared by every stage that trains (teachers, distill, vqa): optimizer
groups, schedules, logs, checkpoints and data-parallel helpers. No stage lives here."""
