"""What each leaf of a model is: kinds, axes, units and matrix views.

Modules, one job each: `.kinds` (the vocabulary of kinds and the
`LeafRole` / `ModelLayout` records),
`.views` (`MatrixView`), `.axis_names` (roles from a
model's logical axis names), `.names` (roles from paths), `.shapes`
(stack and expert axes, the output head, trees without Flax names) and
`.layout` (`model_layout`, which puts them together).
"""
