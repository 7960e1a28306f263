"""Evaluation CLIs for specvlm: `python -m eval.cnn_text` (news summarization, text targets) and friends.

Every CLI runs the autoregressive baseline and specvlm in the same process on the same prompt ids, checks that the
outputs are identical, and writes a JSON summary plus one JSON line per sample. Shared argument groups, error
handling and result files live in `eval.common`; decoding logic lives in `specvlm`, never here.
"""
