"""What each leaf of a model is: kinds, axes, units and matrix views.

Modules, one job each: :mod:`.kinds` (the vocabulary of kinds and the
:class:`~.kinds.LeafRole` / :class:`~.kinds.ModelLayout` records),
:mod:`.views` (:class:`~.views.MatrixView`), :mod:`.axis_names` (roles from a
model's logical axis names), :mod:`.names` (roles from paths), :mod:`.shapes`
(stack and expert axes, the output head, trees without Flax names) and
:mod:`.layout` (:func:`~.layout.model_layout`, which puts them together).
"""
