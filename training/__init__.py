"""Training for specvlm: the data and trainers that make the shipped drafts and the embedded mini VLM.

`training.selfdistill` writes self-distillation data (the target's own answers); `python -m training.train` distils
a feature draft from it (`training.feature_draft`) or, with `--exits`, trains layer-skip exits (`training.exits`),
both on the pieces in `training.common`. `training.scenes` renders the captioning scenes and `training.mini_vlm`
trains the miniature VLM pair on them. Training builds on `specvlm` and `drafters` and never imports `eval`;
nothing in `specvlm` or `drafters` imports training.
"""
