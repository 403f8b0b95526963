"""Student models and their encoders, built by name and size preset.

A student is rebuilt from `student_config(model)` alone (a JSON-able dict holding every architecture
value, not just the preset name), so a checkpoint stays loadable when presets change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from smallsec_ray.students import char_cnn, html_model
from smallsec_ray.students.encoders import Encoder

Student = char_cnn.CharCNN | html_model.HtmlHierModel

# name -> (model class, config class, presets, the config key `max_length` overrides)
_FAMILIES: dict[str, tuple[type[Student], type, Mapping[str, Any], str]] = {
    "char_cnn": (char_cnn.CharCNN, char_cnn.CharCNNConfig, char_cnn.PRESETS, "max_length"),
    "html_hier": (html_model.HtmlHierModel, html_model.HtmlHierConfig, html_model.PRESETS, "max_tokens"),
}


def build_student(model: str, preset: str, num_classes: int,
                  max_length: int | None = None) -> tuple[Student, Encoder]:
    """A freshly initialised student and its encoder. `max_length` (characters for char_cnn, tokens
    for html_hier) overrides the preset's."""
    if model not in _FAMILIES:
        raise ValueError(f"student.model: unknown model {model!r}; expected one of {sorted(_FAMILIES)}")
    cls, _, presets, length_key = _FAMILIES[model]
    if preset not in presets:
        raise ValueError(f"student.preset: unknown preset {preset!r}; expected one of {sorted(presets)}")
    if num_classes < 2:
        raise ValueError(f"a student needs at least 2 classes, got {num_classes}")
    config = presets[preset]
    if max_length is not None:
        config = dataclasses.replace(config, **{length_key: max_length})
    student = cls(config, num_classes)
    return student, student.encoder()


def student_config(student: Student) -> dict[str, Any]:
    """Everything needed to rebuild `student`'s architecture (not its weights), JSON-able."""
    return {"model": student.name, "num_classes": student.num_classes,
            "arch": dataclasses.asdict(student.config)}


def build_from_config(cfg: dict[str, Any]) -> tuple[Student, Encoder]:
    """Rebuilds a student (freshly initialised; load the state dict next) and its encoder from
    `student_config`'s dict, e.g. as read back from a checkpoint's JSON."""
    try:
        cls, config_cls, _, _ = _FAMILIES[cfg["model"]]
        arch = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["arch"].items()}
        student = cls(config_cls(**arch), int(cfg["num_classes"]))
    except (KeyError, TypeError) as err:
        raise ValueError(f"student config: cannot rebuild a student from {cfg!r} ({err!r}); it must be "
                         "the dict that student_config() wrote") from None
    return student, student.encoder()
