"""hrmc: compile a Hierarchical Reasoning Model for Core ML (ANE) and MLX, provably unchanged.

One import package. The command line (`hrmc.cli`) and the ground modules every stage uses (`hrmc.errors`,
`hrmc.files`, `hrmc.binding`, `hrmc.names`, `hrmc.record`, `hrmc.timing`) live here; the stages are its
subpackages `hrmc.hrm_ref`, `hrmc.lowering`, `hrmc.passes`, `hrmc.targets`, `hrmc.parity` and `hrmc.bench`,
and each CLI verb calls one stage's entry. Installed, they are folders inside this one; in a source checkout
they are the folders beside it (pyproject's package-dir), which the editable install (`pip install -e .`)
maps.
"""

__version__ = "0.1.0"
