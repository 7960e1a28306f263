"""Static tree files ("growmaps") and the tools that make them.

`python -m growmaps.measure` measures a draft's acceptance vector and the target's cost by tokens scored;
`python -m growmaps.plan` turns them into a tree with Sequoia's dynamic programme. Shipped growmaps (JSON) live in
this folder; `specvlm.StaticTree()` finds them here. The format is documented in README.md and specvlm/growmap.py.
"""
