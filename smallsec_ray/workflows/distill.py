"""Knowledge distillation: a teacher fine-tuned on clean labels relabels a large noisy set with soft
labels; the student learns from both and is compared with a student trained on the noisy labels alone.

prepare -> finetune_teacher -> label -> train_student -> train_baseline -> evaluate -> export
"""

from smallsec_ray.prepare import run_prepare
from smallsec_ray.stages import Stage

STAGES = [
    Stage("prepare", run_prepare, reads=("data", "classes"),
          about="read shards, quarantine bad rows, split by group"),
]
